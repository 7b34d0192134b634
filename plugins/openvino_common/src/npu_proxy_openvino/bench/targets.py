"""What ``npu-proxy bench`` measures: a device through the backend classes the server
uses, or any OpenAI-compatible server by URL, behind one interface.

Both stream a chat and time it from the caller's side (:class:`~.measure.Sample`);
counts come from the device's own usage or from the server's ``usage``.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.types import (
    Capability,
    Done,
    EmbeddingRequest,
    GenerationRequest,
    Message,
    ModelInfo,
    SamplingOptions,
    TextDelta,
)

from ..backend import OpenVINOBackend
from .measure import EmbedSample, Sample
from .prompts import Turn


class BenchError(Exception):
    """The benchmark cannot run as asked; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class LoadTime:
    """One load of a model on a device: seconds, and the compile cache before it
    (``"empty"``, ``"filled"``, or ``""`` where the device keeps none)."""

    seconds: float
    cache: str


class Target(abc.ABC):
    """A device or a server that streams chats and embeds texts."""

    #: what the table shows: ``CPU``, ``NPU``, ``http://127.0.0.1:8080``
    name: str
    #: ``device`` or ``url``
    kind: str
    #: the chat model's name as the target knows it, and its quantisation ("" unknown)
    model: str
    quantization: str = ""
    #: the embedding model (None: this target does not embed)
    embedding_model: str | None = None

    def facts(self) -> dict[str, Any]:
        """What the records of this target carry besides the machine's facts."""
        return {}

    @abc.abstractmethod
    async def chat(self, turns: Sequence[Turn], max_tokens: int) -> Sample:
        """Stream one greedy chat of at most ``max_tokens`` tokens and time it."""

    @abc.abstractmethod
    async def embed(self, texts: list[str]) -> EmbedSample:
        """Embed ``texts`` in one request and time it."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what the target holds (models on a device, connections)."""


def _messages(turns: Sequence[Turn]) -> tuple[Message, ...]:
    return tuple(Message(role, text) for role, text in turns)


class DeviceTarget(Target):
    """A chat model (and optionally an embedding model) on one device, through its
    backend: the same classes, settings and limits as ``npu-proxy serve``."""

    kind = "device"

    def __init__(self, backend: Backend, model: ModelInfo,
                 embedding: ModelInfo | None = None) -> None:
        self.backend = backend
        self.info = model
        self.name = backend.device
        self.model = model.name
        self.quantization = model.quantization_level
        self.embedding = embedding if embedding and backend.supports(embedding) else None
        self.embedding_model = self.embedding.name if self.embedding else None
        self._loaded: dict[str, LoadedModel] = {}

    def facts(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "max_parallel": self.backend.max_parallel,
                "format": self.info.format, "parameters": self.info.parameter_size or None}

    async def count(self, turns: Sequence[Turn]) -> int:
        """Tokens of ``turns`` rendered with the model's template and tokenizer."""
        request = GenerationRequest(model=self.info.name, messages=_messages(turns))
        return await self.backend.count_tokens(self.info, request)

    def prompt_limit(self) -> tuple[int | None, int, str]:
        """(prompt limit, context limit, the setting that raises them; "" if none)."""
        if isinstance(self.backend, OpenVINOBackend):
            return (self.backend.prompt_limit(self.info), self.backend.context_limit(self.info),
                    self.backend.prompt_limit_setting)
        return self.backend.prompt_limit(self.info), self.info.context_length, ""

    def compile_cache(self, model: ModelInfo) -> str:
        """``empty``/``filled``: the device's compile cache now; "" where it keeps none."""
        if not isinstance(self.backend, OpenVINOBackend):
            return ""
        folder = self.backend.pipeline_properties(model).get("CACHE_DIR")
        if not folder:
            return ""
        path = Path(folder)
        return "filled" if path.is_dir() and any(path.iterdir()) else "empty"

    async def load(self, model: ModelInfo | None = None) -> LoadTime:
        """Load (compile) ``model`` (default: the chat model); timed.

        A model's one-time conversion (GGUF or ONNX to IR, cached in the model store) is
        done before the clock starts, by counting tokens with its tokenizer.
        """
        model = model or self.info
        if model.can(Capability.EMBEDDING):
            await self.backend.count_text_tokens(model, ["convert once"])
        else:
            await self.backend.count_tokens(model, GenerationRequest(
                model=model.name, messages=(Message("user", "convert once"),)))
        cache = self.compile_cache(model)
        started = time.perf_counter()
        loaded = await self.backend.load(model)
        seconds = time.perf_counter() - started
        self._loaded[model.name] = loaded
        return LoadTime(seconds, cache)

    async def unload(self, model: ModelInfo | None = None) -> None:
        loaded = self._loaded.pop((model or self.info).name, None)
        if loaded is not None:
            await loaded.unload()

    async def chat(self, turns: Sequence[Turn], max_tokens: int) -> Sample:
        loaded = self._loaded.get(self.info.name)
        if loaded is None:
            raise BenchError(f"{self.model} is not loaded on {self.name}")
        request = GenerationRequest(
            model=self.info.name, messages=_messages(turns),
            options=SamplingOptions(temperature=0, max_tokens=max_tokens))
        sent = time.perf_counter()
        first: float | None = None
        done: Done | None = None
        async for event in loaded.generate(request):
            if isinstance(event, TextDelta) and first is None and event.text:
                first = time.perf_counter()
            elif isinstance(event, Done):
                done = event
        end = time.perf_counter()
        if done is None:
            raise BenchError(f"{self.name} ended a generation without its usage")
        usage = done.usage
        cached = getattr(usage, "cached_tokens", None)  # reported by backends that know it
        return Sample(sent, first, end, usage.prompt_tokens, usage.completion_tokens,
                      cached if isinstance(cached, int) else None)

    async def embed(self, texts: list[str]) -> EmbedSample:
        if self.embedding is None:
            raise BenchError(f"{self.name} does not run embedding models")
        loaded = self._loaded.get(self.embedding.name)
        if loaded is None:
            raise BenchError(f"{self.embedding.name} is not loaded on {self.name}")
        sent = time.perf_counter()
        result = await loaded.embed(EmbeddingRequest(model=self.embedding.name,
                                                     inputs=tuple(texts)))
        end = time.perf_counter()
        return EmbedSample(sent, end, len(result.vectors), result.prompt_tokens)

    async def close(self) -> None:
        for name in list(self._loaded):
            await self._loaded.pop(name).unload()


class ServerTarget(Target):
    """An OpenAI-compatible server (npu-proxy, llama-server, Ollama, OVMS, vLLM):
    ``/v1/models``, streamed ``/v1/chat/completions`` with usage, ``/v1/embeddings``."""

    kind = "url"

    def __init__(self, url: str, model: str, embedding_model: str | None,
                 client: httpx.AsyncClient, listed: list[str]) -> None:
        self.name = url
        self.model = model
        self.embedding_model = embedding_model
        self._client = client
        self._listed = listed

    @classmethod
    async def connect(cls, url: str, wanted: str | None, fallback: str,
                      embedding: str | None, api_key: str | None) -> ServerTarget:
        """Ask the server which models it serves and choose one.

        ``wanted`` (``--model``) if listed, else ``fallback`` (the default model) if
        listed, else the first listed (the caller compares :attr:`model` with what it
        wanted). ``embedding`` is kept only if listed.
        Raises :class:`BenchError` when the server does not answer as OpenAI does.
        """
        base = url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        if "://" not in base:
            base = "http://" + base
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = httpx.AsyncClient(base_url=base, headers=headers,
                                   timeout=httpx.Timeout(600, connect=10))
        try:
            response = await client.get("/v1/models")
            response.raise_for_status()
            listed = [str(item["id"]) for item in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            await client.aclose()
            raise BenchError(f"{base} did not list its models at /v1/models: {exc}") from None
        model = next((name for name in (wanted, fallback) if name and name in listed),
                     listed[0] if listed else "")
        if not model:
            await client.aclose()
            raise BenchError(f"{base} lists no model at /v1/models")
        return cls(base, model, embedding if embedding in listed else None, client, listed)

    def facts(self) -> dict[str, Any]:
        return {"url": self.name, "models_listed": self._listed}

    async def chat(self, turns: Sequence[Turn], max_tokens: int) -> Sample:
        body = {
            "model": self.model,
            "messages": [{"role": role, "content": text} for role, text in turns],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        sent = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] = {}
        async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise BenchError(f"{self.name} answered {response.status_code}: "
                                 f"{response.text[:300]}")
            async for chunk in _events(response):
                choices = chunk.get("choices") or []
                if first is None and any((c.get("delta") or {}).get("content")
                                         for c in choices):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    usage = chunk["usage"]
        end = time.perf_counter()
        details = usage.get("prompt_tokens_details") or {}
        return Sample(sent, first, end, _int(usage.get("prompt_tokens")),
                      _int(usage.get("completion_tokens")), _int(details.get("cached_tokens")))

    async def embed(self, texts: list[str]) -> EmbedSample:
        if self.embedding_model is None:
            raise BenchError(f"{self.name} lists no embedding model")
        sent = time.perf_counter()
        response = await self._client.post(
            "/v1/embeddings", json={"model": self.embedding_model, "input": texts})
        end = time.perf_counter()
        if response.status_code != 200:
            raise BenchError(f"{self.name} answered {response.status_code}: "
                             f"{response.text[:300]}")
        data = response.json()
        usage = data.get("usage") or {}
        return EmbedSample(sent, end, len(data.get("data", [])), _int(usage.get("prompt_tokens")))

    async def close(self) -> None:
        await self._client.aclose()


async def _events(response: httpx.Response) -> Any:
    """The JSON objects of a server-sent event stream's ``data:`` lines, up to ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            if "error" in event:
                raise BenchError(f"the server streamed an error: {event['error']}")
            yield event


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

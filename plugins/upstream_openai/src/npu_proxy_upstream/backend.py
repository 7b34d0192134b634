"""One remote OpenAI-compatible engine as an npu-proxy device (``upstream:NAME``).

The engine's queue in front of the device bounds what is in flight to the upstream's
``max_parallel``; requests go over one pooled ``httpx.AsyncClient`` per upstream. The
models the engine lists (``GET /models``) are published to the model store while the
server runs, refreshed periodically; a :class:`~npu_proxy_upstream.circuit.Circuit`
takes a failing engine out of routing and a probe brings it back. The API key is sent
as a bearer token and appears nowhere else: not in errors, logs, metrics or ``/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from httpx_sse import EventSource
from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.errors import (
    BusyError,
    EngineError,
    InferenceTimeoutError,
    InvalidRequestError,
    ModelLoadError,
)
from npu_proxy.engine.types import (
    Capability,
    DeviceInfo,
    Done,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    Usage,
)

from .circuit import Circuit
from .settings import UpstreamConfig, UpstreamSettings
from .wire import StreamReader, generation_body

log = logging.getLogger(__name__)

#: ``ModelInfo.format`` of a model only a remote engine serves (no local files)
REMOTE_FORMAT = "remote"
#: what a remote model can be asked for; the engine refuses what it cannot do (400)
REMOTE_CAPABILITIES = frozenset({Capability.COMPLETION, Capability.TOOLS, Capability.EMBEDDING})

Publish = Callable[[str, Iterable[ModelInfo]], object]
Report = Callable[[DeviceInfo], None]


class UpstreamError(EngineError):
    """The remote engine failed (refused the connection, answered 5xx, broke a stream)."""

    status = 502
    code = "upstream_error"


class _Unreachable(Exception):
    """A probe could not list the engine's models; the message is safe to show."""


def retry_after(value: str | None) -> int:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); 1 when absent."""
    if not value:
        return 1
    if value.strip().isdigit():
        return max(1, min(3600, int(value.strip())))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(1, min(3600, int((when - datetime.now(UTC)).total_seconds())))
    return 1


def _message(text: str) -> str:
    """The error message in an OpenAI (or any JSON) error body, else the text itself."""
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(text)
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or ""
        if isinstance(error, str) and error:
            return error[:500]
    return text.strip()[:500] or "no message"


def describe_error(exc: httpx.HTTPError) -> str:
    """A short, secret-free reason for a transport error (no URL, no headers)."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection was closed mid-response"
    return type(exc).__name__


class UpstreamBackend(Backend):
    """The device ``upstream:NAME``. Register one per configured upstream.

    ``simulated`` follows the server's mode: a remote engine serves whether the local
    devices are real or the mock, so it is registered as whichever the mode selects.
    """

    def __init__(self, config: UpstreamConfig, settings: UpstreamSettings,
                 simulated: bool = False) -> None:
        self.config = config
        self.name = f"upstream-{config.name}"
        self.device = config.device
        self.max_parallel = config.max_parallel
        self.max_loaded_models = None
        self.simulated = simulated
        self.remote = True
        self.circuit = Circuit(config.failures, settings.upstream_probe)
        self._refresh = settings.upstream_refresh
        self._client: httpx.AsyncClient | None = None
        #: canonical name here -> the engine's own model id
        self._served: dict[str, str] = {}
        self._models: list[ModelInfo] = []
        self._publish: Publish | None = None
        self._report: Report | None = None
        self._watch: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # --- wiring --------------------------------------------------------------------

    def attach(self, publish: Publish, report: Report) -> None:
        """Start publishing models and device state (``ModelStore.set_discovered``,
        ``Engine.report_device``) and watching the engine. Call once, on the loop."""
        self._publish, self._report = publish, report
        if self._models:
            publish(self.name, self._models)
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            headers = {"Authorization": f"Bearer {c.api_key.get_secret_value()}"} \
                if c.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=c.url,
                headers=headers,
                timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout,
                                      pool=None),
                limits=httpx.Limits(max_connections=c.max_parallel + 2,
                                    max_keepalive_connections=c.max_parallel + 2),
                follow_redirects=False,
            )
        return self._client

    def _scrub(self, text: str) -> str:
        """``text`` with the API key blanked, should an engine echo it back."""
        key = self.config.api_key
        return text.replace(key.get_secret_value(), "***") if key else text

    # --- health ----------------------------------------------------------------------

    def _device_info(self) -> DeviceInfo:
        c = self.circuit
        return DeviceInfo(
            device=self.device,
            present=c.closed,
            full_name=f"OpenAI-compatible engine at {self.config.shown_url}",
            error="" if c.closed else c.describe(),
            properties={
                "url": self.config.shown_url,
                "circuit": str(c.state),
                "consecutive_failures": c.failures,
                "models": sorted(self._served),
            },
        )

    def _state_changed(self) -> None:
        if self._report is not None:
            self._report(self._device_info())
        self._changed.set()

    def _failed(self, reason: str) -> None:
        if self.circuit.failure(reason):
            log.warning("upstream %s is down: %s", self.config.name, reason)
            self._state_changed()

    def _succeeded(self) -> None:
        if self.circuit.success():
            log.info("upstream %s is back", self.config.name)
            self._state_changed()

    async def _watch_loop(self) -> None:
        """Refresh models while healthy; probe with backoff while the circuit is open."""
        while True:
            delay = self._refresh if self.circuit.closed else self.circuit.backoff
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)
                continue  # the state changed: wait again with the new delay
            try:
                await self.probe()
            except Exception:  # never let the watcher die: the next round tries again
                log.exception("probing upstream %s failed", self.config.name)

    async def probe(self) -> DeviceInfo:
        try:
            ids = await self._list_models()
        except _Unreachable as exc:
            changed = self.circuit.failure(str(exc), probe=True)
            if changed:
                log.warning("upstream %s is down: %s", self.config.name, exc)
        else:
            changed = self.circuit.success()
            if changed:
                log.info("upstream %s is back", self.config.name)
            self._set_models(ids)
        if changed:
            self._changed.set()  # the watcher picks the new delay
        if self._report is not None:
            self._report(self._device_info())
        return self._device_info()

    async def _list_models(self) -> list[dict[str, Any]]:
        try:
            response = await self._http().get("/models")
        except httpx.HTTPError as exc:
            raise _Unreachable(f"GET /models: {describe_error(exc)}") from None
        if response.status_code in (401, 403):
            raise _Unreachable(f"GET /models: the engine refused the API key "
                               f"({response.status_code})")
        if response.status_code != 200:
            raise _Unreachable(f"GET /models answered {response.status_code}")
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise _Unreachable("GET /models did not answer an OpenAI model list")
        return [entry for entry in data if isinstance(entry, dict)]

    def _set_models(self, entries: list[dict[str, Any]]) -> None:
        served: dict[str, str] = {}
        models: list[ModelInfo] = []
        for entry in entries:
            model_id = entry.get("id")
            if not isinstance(model_id, str) or not self.config.serves(model_id):
                continue
            try:
                name = self.config.local_name(model_id)
            except InvalidRequestError as exc:
                log.warning("upstream %s: model %r cannot be named here (%s); give the "
                            "engine an alias", self.config.name, model_id, exc.message)
                continue
            served[name] = model_id
            # vLLM says max_model_len; llama.cpp's server the context it runs (n_ctx)
            meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
            context = entry.get("max_model_len") or (meta or {}).get("n_ctx") or 0
            models.append(ModelInfo(
                name=name,
                format=REMOTE_FORMAT,
                family="",
                capabilities=REMOTE_CAPABILITIES,
                context_length=int(context) if isinstance(context, int) else 0,
                source=f"upstream {self.config.name} ({self.config.shown_url})",
            ))
        if served != self._served:
            log.info("upstream %s serves %d model(s)", self.config.name, len(served))
        self._served, self._models = served, models
        if self._publish is not None:
            self._publish(self.name, models)

    # --- the backend contract ---------------------------------------------------------

    def supports(self, model: ModelInfo) -> bool:
        return model.name in self._served

    def prompt_limit(self, model: ModelInfo) -> int | None:
        """What the engine's own context leaves for a prompt, when its model list says
        (vLLM's ``max_model_len``, llama.cpp's ``n_ctx``); ``None`` when it does not, and
        the engine answers for itself. Never the local model's context: a prompt too
        long for a local device overflows here."""
        for served in self._models:
            if served.name == model.name and served.context_length > 0:
                return served.context_length - 1
        return None

    async def count_tokens(self, model: ModelInfo, request: GenerationRequest) -> int:
        """0: the remote tokenizer is not reachable through the OpenAI API. A model
        that is also local is counted by the local backend; the remote engine's own
        count comes back in the generation's usage."""
        return 0

    async def load(self, model: ModelInfo) -> LoadedModel:
        model_id = self._served.get(model.name)
        if model_id is None:
            raise ModelLoadError(f"upstream {self.config.name} does not serve {model.name}")
        return UpstreamModel(self, model, model_id)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        if self._client is not None:
            await self._client.aclose()

    # --- requests ----------------------------------------------------------------------

    def _refusal(self, status: int, headers: httpx.Headers, text: str) -> EngineError:
        """The engine error for a non-200 answer (counted against the circuit if it is
        the engine's fault)."""
        name = self.config.name
        message = self._scrub(_message(text))
        if status in (429, 503):
            return BusyError(f"upstream {name} is busy: {message}",
                             retry_after=retry_after(headers.get("retry-after")))
        if status in (401, 403):
            self._failed(f"the engine refused the API key ({status})")
            return UpstreamError(f"upstream {name} refused the API key ({status})")
        if 400 <= status < 500:
            return InvalidRequestError(f"upstream {name}: {message}")
        self._failed(f"answered {status}")
        return UpstreamError(f"upstream {name} failed ({status}): {message}")

    def _transport(self, exc: httpx.HTTPError, when: str) -> EngineError:
        reason = describe_error(exc)
        self._failed(f"{when}: {reason}")
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return InferenceTimeoutError(
                f"upstream {self.config.name} sent nothing for "
                f"{self.config.read_timeout:g} s ({when})")
        return UpstreamError(f"upstream {self.config.name} failed ({when}): {reason}")

    async def start(self, model_id: str,
                    request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Send ``request`` and return its events once the engine answered 200."""
        path, body = generation_body(request, model_id)
        client = self._http()
        began = time.perf_counter_ns()
        try:
            response = await client.send(client.build_request("POST", path, json=body),
                                         stream=True)
        except httpx.HTTPError as exc:
            raise self._transport(exc, "before answering") from None
        if response.status_code != 200:
            try:
                text = (await response.aread()).decode("utf-8", "replace")
            except httpx.HTTPError:
                text = ""
            finally:
                await response.aclose()
            raise self._refusal(response.status_code, response.headers, text)
        return self._events(response, began)

    async def _events(self, response: httpx.Response,
                      began: int) -> AsyncIterator[GenerationEvent]:
        reader = StreamReader(self.config.name)
        first: int | None = None
        try:
            async for sse in EventSource(response).aiter_sse():
                data = sse.data.strip()
                if data == "[DONE]":
                    break
                if not data:
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    self._failed("sent a stream chunk that is not JSON")
                    raise UpstreamError(
                        f"upstream {self.config.name} sent a stream chunk that is not JSON"
                    ) from None
                try:
                    events = reader.feed(chunk) if isinstance(chunk, dict) else []
                except EngineError as exc:
                    self._failed("failed mid-stream")
                    raise UpstreamError(self._scrub(exc.message)) from None
                for event in events:
                    if first is None:
                        first = time.perf_counter_ns()
                    yield event
            for event in reader.end():
                yield event
        except httpx.HTTPError as exc:
            raise self._transport(exc, "mid-stream") from None
        finally:
            await response.aclose()
        if reader.finish is None:
            self._failed("ended a stream without a finish reason")
            raise UpstreamError(f"upstream {self.config.name} ended the stream unfinished")
        self._succeeded()
        end = time.perf_counter_ns()
        first = first or end
        # Counts are the engine's own (its usage chunk); the durations are measured
        # here, network included, since the OpenAI API does not report them.
        usage = reader.usage or Usage(prompt_tokens=0, completion_tokens=0)
        yield Done(reader.finish, replace(usage, prefill_duration=first - began,
                                          decode_duration=end - first))

    async def embed(self, model_id: str, request: EmbeddingRequest) -> EmbeddingResult:
        body: dict[str, Any] = {"model": model_id, "input": list(request.inputs),
                                "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        began = time.perf_counter_ns()
        try:
            response = await self._http().post("/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise self._transport(exc, "embedding") from None
        if response.status_code != 200:
            raise self._refusal(response.status_code, response.headers, response.text)
        try:
            payload = response.json()
            rows = sorted(payload["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
            tokens = int((payload.get("usage") or {}).get("prompt_tokens") or 0)
        except (ValueError, KeyError, TypeError, AttributeError):
            self._failed("sent an embedding answer that is not OpenAI's shape")
            raise UpstreamError(
                f"upstream {self.config.name} sent an embedding answer that is not "
                "OpenAI's shape") from None
        if len(vectors) != len(request.inputs):
            raise UpstreamError(f"upstream {self.config.name} returned {len(vectors)} "
                                f"vectors for {len(request.inputs)} inputs")
        self._succeeded()
        return EmbeddingResult(vectors, tokens, total_duration=time.perf_counter_ns() - began)


class UpstreamModel(LoadedModel):
    """A model on a remote engine: nothing to load or free here."""

    def __init__(self, backend: UpstreamBackend, info: ModelInfo, model_id: str) -> None:
        self.backend = backend
        self.info = info
        self.device = backend.device
        self.model_id = model_id

    async def open(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        return await self.backend.start(self.model_id, request)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        events = await self.open(request)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return await self.backend.embed(self.model_id, request)

    async def unload(self) -> None:
        """Nothing is resident here; the remote engine manages its own memory."""


__all__ = ["UpstreamBackend", "UpstreamError", "UpstreamModel"]

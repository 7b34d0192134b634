"""The core's own test plugins: a tiny simulated backend, its models and a tiny dialect.

The core's tests use these instead of any installed plugin, so ``core/tests`` runs with
only the core installed. They keep the real contracts (one ``Done`` with true counts,
stop at the next token when closed, compiled prompt limits, absent devices) and count
what reached the "device" so tests can see it.

Used in two ways: imported by the tests and added to a host inline
(:func:`models_plugin`, :func:`npu_proxy.testing.backend_plugin`, :func:`dialect_plugin`),
and, for tests of the ``npu-proxy`` command in a subprocess, installed as the module of
a throwaway distribution (:func:`install_as_distribution`); its module-level hooks then
register the ``SIM`` device, the models and the dialect, in simulated mode only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from npu_proxy.api import ApiDialect
from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.errors import EngineError, ModelLoadError, PromptTooLongError
from npu_proxy.engine.prefix import PREFIX_BLOCK, fingerprint
from npu_proxy.engine.types import (
    Capability,
    DeviceInfo,
    Done,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    PreparedPrompt,
    TextDelta,
    Usage,
)
from npu_proxy.hookspecs import hookimpl
from npu_proxy.testing import inline_plugin
from npu_proxy.web import read_json
from starlette.requests import Request
from starlette.responses import Response

#: Every reply: twelve words, streamed one piece each (a ``max_tokens`` cuts it short).
REPLY = "one two three four five six seven eight nine ten eleven twelve".split()

CHAT_MODEL = ModelInfo(
    name="mock:latest", format="mock", family="mock", context_length=8192,
    capabilities=frozenset({Capability.COMPLETION, Capability.TOOLS}), size=1_000_000,
)
EMBEDDING_MODEL = ModelInfo(
    name="mock-embed:latest", format="mock", family="mock", context_length=512,
    capabilities=frozenset({Capability.EMBEDDING}), size=500_000, embedding_length=8,
)
MODELS = (CHAT_MODEL, EMBEDDING_MODEL)


def render(request: GenerationRequest) -> str:
    """The prompt as the simulated model sees it: ``role: content`` lines, or the prompt."""
    if request.prompt is not None:
        return request.prompt
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages or ())


def count_tokens(text: str) -> int:
    """The simulated tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass
class Counters:
    """What reached the simulated device."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0
    active: int = 0
    peak_active: int = 0
    tokens_emitted: int = 0
    loads: int = 0
    unloads: int = 0
    embeddings: int = 0
    #: prompts rendered and tokenized (``prepare`` calls)
    tokenizations: int = 0
    prompts: list[str] = field(default_factory=list)


class SimLoadedModel(LoadedModel):
    """A simulated model with a prefix cache: the blocks of every prompt it has read
    (as GenAI's, it never serves a whole prompt from cache: the last token is read)."""

    def __init__(self, backend: SimBackend, info: ModelInfo) -> None:
        self.backend = backend
        self.info = info
        self.device = backend.device
        self.size = info.size
        self.cached_blocks: set[int] = set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        backend, counters = self.backend, self.backend.counters
        prepared = request.prepared
        if prepared is None or prepared.owner != backend.name:
            prepared = await backend.prepare(self.info, request)
        prompt = prepared.form
        prompt_tokens = prepared.token_count
        hits = 0
        for block in prepared.prefix:
            if block not in self.cached_blocks:
                break
            hits += 1
        cached = min(hits * PREFIX_BLOCK, max(prompt_tokens - 1, 0))
        self.cached_blocks.update(prepared.prefix)
        if backend.max_prompt_len is not None and prompt_tokens > backend.max_prompt_len:
            raise PromptTooLongError(prompt_tokens, backend.max_prompt_len, f"the {self.device}")
        limit = request.options.max_tokens
        words = REPLY if limit is None else REPLY[:limit]
        reason = FinishReason.LENGTH if len(words) < len(REPLY) else FinishReason.STOP
        counters.started += 1
        counters.active += 1
        counters.peak_active = max(counters.peak_active, counters.active)
        counters.prompts.append(prompt)
        began = time.perf_counter_ns()
        first: int | None = None
        finished = False
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(backend.token_delay)
                counters.tokens_emitted += 1
                first = first or time.perf_counter_ns()
                yield TextDelta(word if i == 0 else " " + word)
            end = time.perf_counter_ns()
            first = first or end
            finished = True
            yield Done(reason, Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words),
                                     cached_tokens=cached, prefill_duration=first - began,
                                     decode_duration=end - first))
        finally:
            counters.active -= 1
            if finished:
                counters.finished += 1
            else:
                counters.cancelled += 1

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        await asyncio.sleep(self.backend.token_delay)
        self.backend.counters.embeddings += 1
        size = request.dimensions or self.info.embedding_length
        vectors = [_unit_vector(text, size) for text in request.inputs]
        return EmbeddingResult(vectors, sum(count_tokens(t) for t in request.inputs))

    async def unload(self) -> None:
        self.backend.counters.unloads += 1


def _unit_vector(text: str, size: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class SimBackend(Backend):
    """A simulated device; every knob a core test needs is a constructor argument.

    :param device: the device name it drives.
    :param token_delay: seconds before each streamed piece.
    :param max_prompt_len: a compiled prompt limit, as the NPU has (None: no limit).
    :param present: False simulates an absent device.
    :param load_delay: seconds a load takes (a slow compile).
    :param fail_load: names of models whose load fails.
    """

    simulated = True

    def __init__(
        self,
        device: str = "SIM",
        *,
        token_delay: float = 0.001,
        max_parallel: int = 1,
        max_loaded_models: int | None = None,
        max_prompt_len: int | None = None,
        present: bool = True,
        load_delay: float = 0.0,
        fail_load: Iterable[str] = (),
    ) -> None:
        self.device = device
        self.name = f"sim-{device.lower()}"
        self.token_delay = token_delay
        self.max_parallel = max_parallel
        self.max_loaded_models = max_loaded_models
        self.max_prompt_len = max_prompt_len
        self.present = present
        self.load_delay = load_delay
        self.fail_load = set(fail_load)
        self.counters = Counters()

    async def probe(self) -> DeviceInfo:
        if not self.present:
            return DeviceInfo(self.device, False, error=f"{self.device} not found (simulated)")
        return DeviceInfo(self.device, True, full_name=f"Simulated {self.device}")

    def supports(self, model: ModelInfo) -> bool:
        return True

    def prompt_limit(self, model: ModelInfo) -> int | None:
        return self.max_prompt_len

    async def count_tokens(self, model: ModelInfo, request: GenerationRequest) -> int:
        return (await self.prepare(model, request)).token_count

    async def prepare(self, model: ModelInfo, request: GenerationRequest) -> PreparedPrompt:
        """Render and "tokenize" (one token a word), counted in ``counters.tokenizations``."""
        self.counters.tokenizations += 1
        prompt = render(request)
        words = prompt.split()
        return PreparedPrompt(len(words), prefix=fingerprint(words), owner=self.name,
                              form=prompt)

    async def load(self, model: ModelInfo) -> LoadedModel:
        if not self.present:
            raise ModelLoadError(f"{self.device} is not available")
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if model.name in self.fail_load:
            raise ModelLoadError(f"simulated failure loading {model.name} on {self.device}")
        self.counters.loads += 1
        return SimLoadedModel(self, model)


def models_plugin() -> Any:
    """An inline plugin that registers :data:`MODELS`."""

    def register_models(register: Callable[[ModelInfo], None]) -> None:
        for model in MODELS:
            register(model)

    return inline_plugin(npu_proxy_register_models=register_models)


# --- the tiny dialect ----------------------------------------------------------------


class TinyDialect(ApiDialect):
    """``/tiny/*``: list models, stream a generation as JSON lines, embed.

    ``POST /tiny/embed`` may leave out ``model``: the engine then uses the server's
    default embedding model. Errors are ``{"tiny_error": message, "code": code}``.
    """

    name = "tiny"
    prefixes = ("/tiny",)

    def router(self, ctx: Any) -> APIRouter:
        router = APIRouter()

        @router.get("/tiny/models")
        async def models() -> JSONResponse:
            return JSONResponse({"models": [m.name for m in ctx.store.models()]})

        @router.post("/tiny/generate")
        async def generate(request: Request) -> Response:
            body = await read_json(request)
            generation = await ctx.engine.generate(GenerationRequest(
                model=body.get("model", CHAT_MODEL.name), prompt=body["prompt"]))

            async def lines() -> AsyncIterator[str]:
                async with generation:
                    async for event in generation:
                        if isinstance(event, TextDelta):
                            yield json.dumps({"text": event.text}) + "\n"
                    yield json.dumps({"done": True}, separators=(",", ":")) + "\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson",
                                     headers=generation.route.headers())

        @router.post("/tiny/embed")
        async def embed(request: Request) -> JSONResponse:
            body = await read_json(request)
            result = await ctx.engine.embed(
                EmbeddingRequest(model=body.get("model"), inputs=tuple(body["input"])))
            return JSONResponse({"model": result.model.name,
                                 "embeddings": result.result.vectors},
                                headers=result.route.headers())

        return router

    def error_response(self, error: EngineError) -> Response:
        return JSONResponse({"tiny_error": error.message, "code": error.code},
                            status_code=error.status, headers=error.headers)


def dialect_plugin() -> Any:
    """An inline plugin that registers a :class:`TinyDialect`."""
    return inline_plugin(npu_proxy_register_api=lambda register: register(TinyDialect()))


def tiny_plugins(*backends: Backend) -> dict[str, Any]:
    """Inline plugins for an app: ``backends`` as its devices, :data:`MODELS`, the dialect."""
    from npu_proxy.testing import backend_plugin

    return {"test-devices": backend_plugin(*backends), "test-models": models_plugin(),
            "test-dialect": dialect_plugin()}


# --- as an installed distribution (for ``npu-proxy`` in a subprocess) ---------------


@hookimpl
def npu_proxy_register_backends(register: Callable[[Backend], None]) -> None:
    # Simulated backends serve only in simulated mode; the engine selects by mode.
    delay = float(os.environ.get("NPU_PROXY_TINY_TOKEN_DELAY", "0.001"))
    register(SimBackend("SIM", token_delay=delay))


@hookimpl
def npu_proxy_register_models(register: Callable[[ModelInfo], None]) -> None:
    for model in MODELS:
        register(model)


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None]) -> None:
    register(TinyDialect())


def make_distribution(root: Path, name: str, module: str, source: str, group: str) -> Path:
    """A tiny installed-looking distribution: a module plus its dist-info, nothing else.

    Returns the folder to put on ``PYTHONPATH``; the entry point is named after the
    module with ``-`` for ``_`` (``tiny_policy`` -> ``tiny-policy``).
    """
    site = root / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{module.replace('_', '-')} = {module}\n")
    return site


#: The plugin name this module has when installed by :func:`install_as_distribution`.
INSTALLED_NAME = "core-test-plugins"


def install_as_distribution(root: Path) -> Path:
    """This module as distribution ``npu-proxy-core-test-plugins`` (entry point
    :data:`INSTALLED_NAME`); returns the folder to put on ``PYTHONPATH``."""
    return make_distribution(root, "npu-proxy-core-test-plugins", "core_test_plugins",
                             Path(__file__).read_text(), "npu_proxy.backends")

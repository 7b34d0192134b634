"""A deterministic simulated backend: same prompt, same reply; honest counts; real streaming.

It stands in for a device wherever no hardware is needed: dialect tests, load and
cancellation tests, and users running with ``NPU_PROXY_REAL_INFERENCE=0``. It keeps
counters (started, finished, cancelled, peak concurrency) so tests can see what reached
the "device".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.errors import InvalidRequestError, ModelLoadError, PromptTooLongError
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
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|\w+|[^\w\s]", re.UNICODE)
_VOCAB = (
    "the quick brown fox jumps over lazy dog while npu proxy streams tokens from a "
    "simulated device so clients can be tested without any hardware at all"
).split(" ")


def count_tokens(text: str) -> int:
    """The mock tokenizer: words, punctuation marks and each CJK character are tokens."""
    return len(_TOKEN.findall(text))


def render(request: GenerationRequest, model: ModelInfo | None = None) -> str:
    """The prompt as the mock "model" sees it: a simple chat template, or the raw prompt.
    A reasoning ``model``'s template also renders whether it should think."""
    if request.prompt is not None:
        return request.prompt + (request.suffix or "")
    lines = [f"<|{m.role}|>{m.content}" for m in request.messages or ()]
    if request.tools:
        lines.insert(0, "<|tools|>" + json.dumps([t.name for t in request.tools]))
    if request.think is not None and model is not None and model.can(Capability.THINKING):
        # what a reasoning template renders for enable_thinking
        lines.append(f"<|think|>{str(request.think).lower()}")
    return "\n".join(lines) + "\n<|assistant|>"


def token_logprob(piece: GenerationEvent) -> TokenLogprob:
    """The mock's "log-probability" of a piece (one token): a fixed value in [-4, 0)
    drawn from its text, so the same piece always gets the same one."""
    text = json.dumps(piece.call.arguments) if isinstance(piece, ToolCallDelta) else (
        piece.text if isinstance(piece, TextDelta | ThinkingDelta) else "")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return TokenLogprob(text, -(digest[0] + 1) / 64)


#: Words the mock reasoning model thinks at each effort (None and True: medium).
THINKING_WORDS = {"low": 4, "medium": 8, "high": 16}


def thinking_words(request: GenerationRequest, prompt: str) -> list[str]:
    """What the mock reasoning model thinks before it answers: a word per token, more
    the harder it is asked to think, never more than ``thinking_budget``; nothing when
    thinking is off or for a raw prompt."""
    if request.think is False or request.messages is None:
        return []
    level = request.think if isinstance(request.think, str) else "medium"
    size = THINKING_WORDS[level]
    if request.thinking_budget is not None:
        size = min(size, request.thinking_budget)
    words = reply_words("thinking:" + prompt)
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(size)]


def reply_words(prompt: str) -> list[str]:
    """A deterministic reply: 12-23 vocabulary words chosen by the prompt's hash."""
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    length = 12 + digest[0] % 12
    return [_VOCAB[digest[(i % 31) + 1] % len(_VOCAB)] for i in range(length)]


def example_value(schema: dict[str, Any]) -> Any:
    """A small value that satisfies ``schema`` (enough of JSON Schema for tests)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        required = schema.get("required", list(props))
        return {key: example_value(props.get(key, {})) for key in required}
    if kind == "array":
        return [example_value(schema.get("items", {}))] * max(1, schema.get("minItems", 1))
    return {"string": "mock", "integer": 42, "number": 4.2, "boolean": True}.get(kind)


def _wanted_tool(request: GenerationRequest) -> ToolSpec | None:
    if not request.tools or request.tool_choice == "none" or not request.messages:
        return None
    if request.messages[-1].role == "tool":  # the tool answered: reply in text now
        return None
    if request.tool_choice not in ("auto", "required"):
        return next((t for t in request.tools if t.name == request.tool_choice), None)
    return _tool_asked_for(request.tools, request.messages[-1].content)


def _tool_asked_for(tools: tuple[ToolSpec, ...], text: str) -> ToolSpec:
    """The tool the message asks for, as a model would pick it: the first whose name,
    or a word of its name (``time`` of ``get_time``), the message mentions; the first
    tool when none is mentioned."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))

    def mentioned(tool: ToolSpec) -> bool:
        parts = [p for p in re.split(r"[_\-.]", tool.name.lower()) if len(p) > 2]
        return tool.name.lower() in text.lower() or any(
            p in words and p not in _VERBS for p in parts
        )

    return next((tool for tool in tools if mentioned(tool)), tools[0])


#: Words in tool names that say nothing about which tool is meant.
_VERBS = frozenset({"get", "set", "run", "list", "make", "create", "fetch", "call"})


@dataclass
class MockCounters:
    """What reached the simulated device; tests read these."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0
    active: int = 0
    peak_active: int = 0
    tokens_emitted: int = 0
    loads: int = 0
    unloads: int = 0
    prompts: list[str] = field(default_factory=list)


class MockLoadedModel(LoadedModel):
    def __init__(self, backend: MockBackend, info: ModelInfo) -> None:
        self.backend = backend
        self.info = info
        self.device = backend.device
        self.size = info.size or 1_000_000

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        backend, counters = self.backend, self.backend.counters
        prompt = render(request, self.info)
        prompt_tokens = count_tokens(prompt)
        limit = backend.prompt_limit(self.info)
        if limit is not None and prompt_tokens > limit:
            raise PromptTooLongError(prompt_tokens, limit, f"the {self.device}")
        counters.started += 1
        counters.active += 1
        counters.peak_active = max(counters.peak_active, counters.active)
        counters.prompts.append(prompt)
        began = time.perf_counter_ns()
        first: int | None = None
        generated = 0
        finished = False
        try:
            pieces, reason, stop = self._plan(request, prompt)
            thought = sum(1 for piece in pieces if isinstance(piece, ThinkingDelta))
            logprobs: list[TokenLogprob] = []
            for piece in pieces:
                await asyncio.sleep(backend.token_delay)
                if backend.fail_after is not None and generated >= backend.fail_after:
                    raise RuntimeError("simulated device failure")
                generated += 1
                counters.tokens_emitted += 1
                if request.options.logprobs:
                    logprobs.append(token_logprob(piece))
                if first is None:
                    first = time.perf_counter_ns()
                yield piece
            end = time.perf_counter_ns()
            first = first or end
            finished = True
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=generated,
                prefill_duration=first - began,
                decode_duration=end - first,
            )
            yield Done(
                finish_reason=reason, usage=usage, stop_sequence=stop, reasoning_tokens=thought,
                logprobs=tuple(logprobs),
            )
        finally:
            counters.active -= 1
            if finished:
                counters.finished += 1
            else:
                counters.cancelled += 1

    def _plan(
        self, request: GenerationRequest, prompt: str
    ) -> tuple[list[GenerationEvent], FinishReason, str | None]:
        """The events to stream, the finish reason and the stop string that hit: the
        reasoning first (a reasoning model), then the answer, ``max_tokens`` in all."""
        thinking: list[GenerationEvent] = []
        if self.info.can(Capability.THINKING):
            thinking = [ThinkingDelta(w) for w in thinking_words(request, prompt)]
        limit = request.options.max_tokens
        if limit is not None and limit <= len(thinking):
            return thinking[:limit], FinishReason.LENGTH, None
        if limit is not None:
            request = replace(request, options=replace(request.options,
                                                       max_tokens=limit - len(thinking)))
        pieces, reason, stop = self._answer(request, prompt)
        return [*thinking, *pieces], reason, stop

    def _answer(
        self, request: GenerationRequest, prompt: str
    ) -> tuple[list[GenerationEvent], FinishReason, str | None]:
        tool = _wanted_tool(request)
        if tool is not None:
            call = ToolCall(
                id="call_" + hashlib.sha256(prompt.encode()).hexdigest()[:24],
                name=tool.name,
                arguments=example_value(tool.parameters or {"type": "object"}) or {},
            )
            return [ToolCallDelta(call)], FinishReason.TOOL_CALLS, None
        if request.response_format is not None:
            schema = request.response_format.schema or {"type": "object", "properties": {
                "answer": {"type": "string"}}}
            text = json.dumps(example_value(schema))
            words = [text[i : i + 4] for i in range(0, len(text), 4)]
            return [TextDelta(w) for w in words], FinishReason.STOP, None
        words = [w if i == 0 else " " + w for i, w in enumerate(reply_words(prompt))]
        reason = FinishReason.STOP
        max_tokens = request.options.max_tokens
        if max_tokens is not None and max_tokens < len(words):
            words, reason = words[:max_tokens], FinishReason.LENGTH
        text = ""
        for i, word in enumerate(words):
            candidate = text + word
            hits = sorted(
                (candidate.index(s), s) for s in request.options.stop if s and s in candidate
            )
            if hits:
                at, stop = hits[0]
                tail = candidate[len(text) : at]
                pieces: list[GenerationEvent] = [TextDelta(w) for w in [*words[:i], tail] if w]
                return pieces, FinishReason.STOP, stop
            text = candidate
        return [TextDelta(w) for w in words], reason, None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        await asyncio.sleep(self.backend.token_delay)
        size = request.dimensions or self.info.embedding_length or 8
        # Thousands of inputs take a second to hash: in a thread, as a device would be.
        vectors = await asyncio.to_thread(_vectors, request.inputs, size)
        return EmbeddingResult(vectors, sum(count_tokens(t) for t in request.inputs))

    async def unload(self) -> None:
        self.backend.counters.unloads += 1


def _vectors(texts: tuple[str, ...], size: int) -> list[list[float]]:
    vectors = []
    for text in texts:
        vectors.append(_vector(text, size))
        time.sleep(0)  # let the event loop in between vectors, not only every 5 ms
    return vectors


def _vector(text: str, size: int) -> list[float]:
    raw: list[float] = []
    block = 0
    while len(raw) < size:
        digest = hashlib.sha256(f"{block}:{text}".encode("utf-8", "surrogatepass")).digest()
        raw += [(b - 127.5) / 127.5 for b in digest]
        block += 1
    raw = raw[:size]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class MockBackend(Backend):
    """A simulated device. Every knob a test needs is a constructor argument.

    :param device: the device name it pretends to be (``"MOCK"`` by default).
    :param token_delay: seconds between streamed pieces.
    :param max_prompt_len: a compiled prompt limit, like the NPU's (None: no limit).
    :param present: False simulates an absent device.
    :param load_delay: seconds a load takes (a slow compile).
    :param fail_load: models (by name) whose load fails.
    :param fail_after: fail mid-stream after this many pieces.
    """

    simulated = True

    def __init__(
        self,
        device: str = "MOCK",
        *,
        name: str | None = None,
        token_delay: float = 0.005,
        max_parallel: int = 1,
        max_loaded_models: int | None = None,
        max_prompt_len: int | None = None,
        present: bool = True,
        load_delay: float = 0.0,
        fail_load: Iterable[str] = (),
        fail_after: int | None = None,
    ) -> None:
        self.device = device
        self.name = name or f"mock-{device.lower()}"
        self.token_delay = token_delay
        self.max_parallel = max_parallel
        self.max_loaded_models = max_loaded_models
        self.max_prompt_len = max_prompt_len
        self.present = present
        self.load_delay = load_delay
        self.fail_load = set(fail_load)
        self.fail_after = fail_after
        self.counters = MockCounters()
        self.loaded: dict[str, MockLoadedModel] = {}

    async def probe(self) -> DeviceInfo:
        if not self.present:
            return DeviceInfo(self.device, False, error=f"{self.device} not found (simulated)")
        return DeviceInfo(self.device, True, full_name=f"Simulated {self.device}")

    def supports(self, model: ModelInfo) -> bool:
        return True

    def prompt_limit(self, model: ModelInfo) -> int | None:
        return self.max_prompt_len

    async def count_tokens(self, model: ModelInfo, request: GenerationRequest) -> int:
        return count_tokens(render(request, model))

    async def count_text_tokens(self, model: ModelInfo, texts: list[str]) -> list[int]:
        return [count_tokens(t) for t in texts]

    async def render(self, model: ModelInfo, request: GenerationRequest) -> str:
        return render(request, model)

    async def tokenize(self, model: ModelInfo, text: str) -> list[int]:
        """The mock's token ids are the text's UTF-8 bytes (so any text round-trips)."""
        return list(text.encode("utf-8"))

    async def detokenize(self, model: ModelInfo, ids: list[int]) -> str:
        if any(not 0 <= i < 256 for i in ids):
            raise InvalidRequestError("token ids of the mock model are 0 to 255",
                                      param="context")
        return bytes(ids).decode("utf-8", errors="replace")

    async def load(self, model: ModelInfo) -> LoadedModel:
        if not self.present:
            raise ModelLoadError(f"{self.device} is not available")
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if model.name in self.fail_load:
            raise ModelLoadError(f"simulated failure loading {model.name} on {self.device}")
        self.counters.loads += 1
        loaded = MockLoadedModel(self, model)
        self.loaded[model.name] = loaded
        return loaded


def mock_models() -> list[ModelInfo]:
    """The simulated models: a chat model with tools, a reasoning model (tools and
    thinking) and an embedding model."""
    chat = ModelInfo(
        name="mock:latest",
        format="mock",
        family="mock",
        capabilities=frozenset({Capability.COMPLETION, Capability.TOOLS}),
        context_length=8192,
        size=1_000_000,
        digest=hashlib.sha256(b"mock:latest").hexdigest(),
        parameter_size="1M",
        quantization_level="none",
        architecture="mock",
        source="npu-proxy-mock",
        template="{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}",
    )
    return [
        chat,
        replace(
            chat,
            name="mock-think:latest",
            capabilities=chat.capabilities | {Capability.THINKING},
            digest=hashlib.sha256(b"mock-think:latest").hexdigest(),
            template=(
                "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                "{% if enable_thinking is defined %}<|think|>{{ enable_thinking }}\n"
                "{% endif %}<|assistant|><think>"
            ),
        ),
        ModelInfo(
            name="mock-embed:latest",
            format="mock",
            family="mock",
            capabilities=frozenset({Capability.EMBEDDING}),
            context_length=512,
            size=500_000,
            digest=hashlib.sha256(b"mock-embed:latest").hexdigest(),
            parameter_size="1M",
            quantization_level="none",
            architecture="mock",
            embedding_length=384,
            source="npu-proxy-mock",
        ),
    ]

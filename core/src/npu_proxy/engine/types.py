"""The engine's request and event types: the only language dialects and backends share.

Dialect plugins translate their wire format into these types; backend plugins consume
them and yield :class:`GenerationEvent` values. Nothing here knows about HTTP or
OpenVINO. All durations are integer nanoseconds, measured, never estimated.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .formats import FormatDetails

#: The context a model is given when its files declare none (every format uses it).
DEFAULT_CONTEXT_LENGTH = 2048


class Capability(enum.StrEnum):
    """What a model can do; the names are Ollama's ``/api/show`` capability strings."""

    COMPLETION = "completion"
    TOOLS = "tools"
    EMBEDDING = "embedding"
    VISION = "vision"
    INSERT = "insert"
    THINKING = "thinking"


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context ran out
    TOOL_CALLS = "tool_calls"  # the model answered with tool calls


@dataclass(frozen=True, slots=True)
class PulledFile:
    """One file a pull downloaded: its path in the repository, size and LFS SHA-256."""

    path: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class PulledFrom:
    """Where a pulled model came from: the hub repository, the commit, the files."""

    repo: str
    revision: str
    files: tuple[PulledFile, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model the server can serve: the single source of truth for its metadata.

    ``name`` is the canonical Ollama-style ``model:tag`` (always with a tag).
    ``format`` is the name of the registered :class:`~npu_proxy.engine.formats.ModelFormat`
    that describes its files (``"gguf"``, ``"ir"``, ``"onnx"``, the mock's ``"mock"``):
    a plugin can add formats, so it is checked by the host against the registered
    formats, not by a closed enumeration. ``path`` is the GGUF file or IR folder
    (``None`` for simulated models). ``details`` are the format's own typed facts.
    Facts the files do not state are empty strings (never guessed), except a missing
    context length, which is :data:`DEFAULT_CONTEXT_LENGTH`.
    """

    name: str
    format: str
    family: str
    capabilities: frozenset[Capability]
    context_length: int
    size: int = 0
    digest: str = ""
    path: Path | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    architecture: str = ""
    modified_at: datetime | None = None
    source: str = ""  # where it came from: a package, a repository, a local file
    builtin: bool = False  # shipped with a plugin; cannot be deleted
    embedding_length: int = 0
    template: str = ""  # the chat template as the model declares it or a user set it
    details: FormatDetails | None = None  # owned and defined by the model's format
    pulled: PulledFrom | None = None  # set for models pulled from a hub
    system: str = ""  # a system prompt a user stored with the model (create)
    license: str = ""  # license text a user stored with the model (create)
    #: request options a user stored with the model, under the names of the dialect
    #: that stored them (Ollama's ``/api/create`` ``parameters``: ``num_ctx``, ``stop``
    #: ...); that dialect validates them when storing and reads them back.
    parameters: dict[str, Any] = field(default_factory=dict)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for. ``arguments`` is a decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn. ``role`` is system, user, assistant or tool.

    ``images`` holds raw image bytes; a text-only model refuses them before generation.
    ``tool_call_id``/``tool_name`` identify which call a tool message answers.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Sampling and length controls. ``None`` means "the model's own default".

    ``max_tokens=None`` generates until a stop condition or the end of the context.
    ``temperature=0`` means greedy decoding.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None
    #: report each generated token's log-probability (:attr:`Done.logprobs`)
    logprobs: bool = False

    def checked(self) -> SamplingOptions:
        """These options within what every backend accepts, or :class:`InvalidRequestError`
        naming the first one out of range. The one owner of the ranges (docs/clients.md,
        "Sampling options"); the engine applies it to every generation.

        The ranges are OpenVINO GenAI's (the backend with the narrowest ones), so a
        request gets the same answer on every device. Refused: any number that is not
        finite, and values outside :data:`RANGES` (``top_p`` 0 and ``min_p`` 1 among
        them: GenAI refuses both while sampling), a ``seed`` above :data:`SEED_MAX`,
        an empty stop string. Clamped, keeping their meaning: a negative ``seed`` means
        a random one (Ollama's ``-1``); ``max_tokens`` and ``num_ctx`` above
        :data:`COUNT_MAX` and ``top_k`` above :data:`TOP_K_MAX` are taken as that
        maximum (the context bounds a generation far sooner, and no vocabulary has that
        many tokens).
        """
        for name, (low, high, rule) in RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidRequestError(f"{name} must be a finite number", param=name)
            if not (low(value) and high(value)):
                raise InvalidRequestError(f"{name} must be {rule} (got {value:g})", param=name)
        if self.seed is not None and self.seed > SEED_MAX:
            raise InvalidRequestError(f"seed must be at most {SEED_MAX}", param="seed")
        if any(not stop for stop in self.stop):
            raise InvalidRequestError("stop strings must not be empty", param="stop")
        return replace(
            self,
            seed=None if self.seed is not None and self.seed < 0 else self.seed,
            max_tokens=_at_most(self.max_tokens, COUNT_MAX),
            num_ctx=_at_most(self.num_ctx, COUNT_MAX),
            top_k=_at_most(self.top_k, TOP_K_MAX),
        )


#: The largest seed (an unsigned 64-bit integer, as OpenVINO GenAI's ``rng_seed``).
SEED_MAX = 2**64 - 1
#: ``max_tokens`` and ``num_ctx`` above this (the largest unsigned 32-bit integer) are
#: taken as it.
COUNT_MAX = 2**32 - 1
#: ``top_k`` above this (the largest signed 32-bit integer) is taken as it: every token.
TOP_K_MAX = 2**31 - 1

_Bound = Callable[[float], bool]

#: Each option's accepted range (GenAI's): a test of its low end, of its high end, and
#: the range in words.
RANGES: dict[str, tuple[_Bound, _Bound, str]] = {
    "max_tokens": (lambda v: v >= 1, lambda v: True, "at least 1"),
    "temperature": (lambda v: v >= 0, lambda v: True, "at least 0"),
    "top_p": (lambda v: v > 0, lambda v: v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 0, lambda v: True, "at least 0"),
    "min_p": (lambda v: v >= 0, lambda v: v < 1, "in [0, 1)"),
    "repetition_penalty": (lambda v: v > 0, lambda v: True, "greater than 0"),
    "presence_penalty": (lambda v: v >= -2, lambda v: v <= 2, "between -2 and 2"),
    "frequency_penalty": (lambda v: v >= -2, lambda v: v <= 2, "between -2 and 2"),
    "num_ctx": (lambda v: v >= 1, lambda v: True, "at least 1"),
}


def _at_most(value: int | None, high: int) -> int | None:
    return value if value is None or value <= high else high



@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: ``json`` (any JSON object) or ``json_schema`` (this schema)."""

    kind: Literal["json", "json_schema"]
    schema: dict[str, Any] | None = None


ToolChoice = Literal["auto", "none", "required"] | str
"""``auto``, ``none``, ``required``, or the name of the one tool that must be called."""

ThinkLevel = Literal["low", "medium", "high"]
"""How hard a reasoning model should think, where its template lets it be told."""


@dataclass(frozen=True, slots=True, eq=False)
class PreparedPrompt:
    """A request's prompt as its model reads it: rendered and tokenized once per request.

    Made by the backend that counts the prompt (:meth:`Backend.prepare`); the engine's
    context check, routing and the generation itself all use this one result.
    ``token_count`` is exact (template applied, the model's own tokenizer). ``prefix``
    fingerprints the prompt's leading blocks of tokens (:mod:`~npu_proxy.engine.prefix`),
    empty when the backend cannot tell. ``form`` is the backend's own rendering (text,
    token ids), opaque to everyone else; ``owner`` names the kind of backend that made
    it (backends of several devices may share one), so a backend takes only forms it
    understands.
    """

    token_count: int
    prefix: tuple[int, ...] = ()
    owner: str = ""
    form: Any = None
    #: tokens the engine cut from the request's prompt to fit the context
    #: (:attr:`GenerationRequest.truncate`); 0 when it reaches the model whole
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A text generation, either chat (``messages``) or raw (``prompt``).

    Exactly one of ``messages`` and ``prompt`` is set. For ``messages`` the backend
    applies the model's chat template exactly once; a raw ``prompt`` reaches the model
    untouched. ``keep_alive`` is seconds to keep the model loaded afterwards (``None``:
    the server default; negative: forever; ``0``: unload when done).
    """

    model: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    suffix: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    options: SamplingOptions = field(default_factory=SamplingOptions)
    response_format: ResponseFormat | None = None
    #: Reasoning (models with the ``thinking`` capability): None is the model's own
    #: default, False renders the template without thinking, True or a level asks for
    #: it. ``thinking_budget`` caps the reasoning tokens (None: no cap of its own).
    think: bool | ThinkLevel | None = None
    thinking_budget: int | None = None
    keep_alive: float | None = None
    #: A conversation that does not fit the context loses its oldest messages (never
    #: the leading system ones nor the last) instead of being refused (Ollama's way);
    #: when the last message (or a raw prompt) alone is too long, the end of it is kept.
    truncate: bool = False
    #: The prompt as the model reads it, made once by the engine (:meth:`Backend.prepare`)
    #: and handed to the backend with the request; None before admission.
    prepared: PreparedPrompt | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages and prompt must be given")

    @property
    def images(self) -> tuple[bytes, ...]:
        if self.messages is None:
            return ()
        return tuple(image for message in self.messages for image in message.images)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Embed each of ``inputs``. ``truncate`` cuts inputs to the context instead of failing.

    ``model`` None means the server's default embedding model (``NPU_PROXY_EMBEDDING_MODEL``).
    ``dimensions`` asks for vectors cut to that length (then re-normalised); ``None``
    keeps the model's own size.
    """

    model: str | None
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: float | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Vectors in input order, the tokens they took, and measured durations (ns)."""

    vectors: list[list[float]]
    prompt_tokens: int
    total_duration: int = 0
    load_duration: int = 0


# --- events a backend yields during a generation -------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text (never splits a multi-byte character)."""

    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """A piece of the model's reasoning, split from the answer by the backend."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One complete tool call, parsed from the model's output."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class Usage:
    """Real counts and timings of one generation (durations in nanoseconds).

    ``prompt_tokens`` counts the rendered prompt with the model's tokenizer;
    ``completion_tokens`` the generated tokens. ``prefill_duration`` runs from the
    start of generation to the first token, ``decode_duration`` from there to the end.
    ``cached_tokens`` (part of ``prompt_tokens``) were read from the device's prefix
    cache instead of being evaluated again: a backend reports only what it can vouch
    for, so the true number may be higher, never lower.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    load_duration: int = 0
    prefill_duration: int = 0
    decode_duration: int = 0
    total_duration: int = 0

    @property
    def evaluated_tokens(self) -> int:
        """Prompt tokens the device evaluated (those not read from its prefix cache)."""
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token (its text) and the log-probability the model gave it (<= 0)."""

    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class Done:
    """The final event of every generation that did not fail.

    ``stop_sequence`` is the caller's stop string that ended the generation (it is not
    part of the streamed text), or None when it ended another way.
    ``reasoning_tokens`` counts the generated tokens (part of
    ``usage.completion_tokens``) that were reasoning (:class:`ThinkingDelta`).
    ``logprobs`` has one entry per generated token, in order, when the request asked
    for them (``SamplingOptions.logprobs``).
    """

    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    reasoning_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


GenerationEvent = TextDelta | ThinkingDelta | ToolCallDelta | Done


# --- device and routing facts ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a backend knows of its device. ``present=False`` carries the reason in ``error``."""

    device: str
    present: bool
    full_name: str = ""
    driver_version: str = ""
    memory_bytes: int | None = None
    error: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

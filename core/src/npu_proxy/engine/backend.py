"""The device-backend contract: what the engine asks of a backend plugin.

A backend drives one device (``"NPU"``, ``"GPU"``, ``"CPU"``, or ``"MOCK"``). The engine
owns queuing, routing, load/unload timing and keep-alive; the backend only probes its
device, counts tokens, loads models and runs them. Backends never import fastapi.

Blocking work (compiles, tokenizer loads, device enumeration) must run in a worker
thread (``asyncio.to_thread``): the event loop serves ``/health`` meanwhile.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from .errors import CapabilityError
from .types import (
    DeviceInfo,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    PreparedPrompt,
)


class LoadedModel(abc.ABC):
    """A model resident on a device. Created by :meth:`Backend.load`.

    The engine guarantees at most :attr:`Backend.max_parallel` concurrent calls to
    :meth:`generate`/:meth:`embed` on one backend, and never calls them after
    :meth:`unload`.
    """

    info: ModelInfo
    device: str
    #: bytes the model occupies on its device (reported by ``/api/ps``)
    size: int = 0

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the generation's events, ending with exactly one :class:`Done`.

        ``request.prepared`` is the prompt the engine prepared with this model's backend
        (:meth:`Backend.prepare`): use its ``form`` rather than rendering and tokenizing
        again; when it is None or of another ``owner`` (a direct call), prepare it here.
        Raises :class:`~npu_proxy.engine.errors.PromptTooLongError` before touching the
        device when the prompt exceeds what the device was compiled for. When the
        consumer stops iterating (``aclose()`` or task cancellation), generation must
        stop at the next token and the device must be free again when ``aclose`` returns.
        ``Done.usage`` carries real counts and durations measured by the backend
        (``load_duration`` may be 0: the engine fills in the load it measured).
        """

    async def open(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Start ``request`` and return its events once the device has accepted it.

        The engine calls this before it hands a generation to a dialect. An
        :class:`~npu_proxy.engine.errors.EngineError` of status 500 or more raised here
        means the device failed before producing anything: the engine then tries the
        next device (route reason ``failover``), and tells the client this error only
        when no device is left. A status below 500 is the request's own fault and goes
        to the client at once. The default returns :meth:`generate` unstarted; a remote
        engine overrides it to send the request and wait for the response to begin.
        """
        return self.generate(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed ``request.inputs`` in order. Only models with the embedding capability."""
        raise CapabilityError(f"\"{self.info.name}\" does not support generating embeddings")

    @abc.abstractmethod
    async def unload(self) -> None:
        """Free the device memory this model holds. Called once."""


class Backend(abc.ABC):
    """A device backend. Register instances through ``npu_proxy_register_backends``.

    :attr:`name` is unique across all loaded plugins (``"openvino-npu"``);
    :attr:`device` names the device it drives; one backend per device is active.
    """

    name: str
    device: str
    #: concurrent generations the device can run (NPU: 1)
    max_parallel: int = 1
    #: models that may be resident at once (NPU: 1; None: unlimited)
    max_loaded_models: int | None = None
    #: simulated backends serve when ``NPU_PROXY_REAL_INFERENCE=0``, real ones otherwise
    simulated: bool = False
    #: a remote engine reached over the network: routing tries local devices first
    remote: bool = False

    @abc.abstractmethod
    async def probe(self) -> DeviceInfo:
        """Report whether the device is present, with its name and driver.

        Must not raise: an absent device is ``DeviceInfo(present=False, error=...)``
        naming the device and what the runtime sees instead.
        """

    @abc.abstractmethod
    def supports(self, model: ModelInfo) -> bool:
        """Whether this backend can load ``model`` (by format and capabilities).

        What a model file is, which files a pull fetches and how they are converted is
        the model format's business (``npu_proxy_register_model_formats``), not the
        backend's.
        """

    def prompt_limit(self, model: ModelInfo) -> int | None:
        """The most prompt tokens this device accepts for ``model``; ``None``: the context.

        Routing uses it to send a long prompt elsewhere before it reaches the device.
        """
        return None

    @abc.abstractmethod
    async def count_tokens(self, model: ModelInfo, request: GenerationRequest) -> int:
        """Tokens of the prompt exactly as the model will see it (template applied).

        Uses the model's own tokenizer and does not need the model to be loaded.
        """

    async def prepare(self, model: ModelInfo, request: GenerationRequest) -> PreparedPrompt:
        """The prompt of ``request`` as ``model`` reads it, rendered and tokenized once.

        The engine calls it once per request (more only to fit a long conversation into
        the context) and passes the result to the generation in ``request.prepared``;
        the count, the context check and routing use the same result. The default
        counts with :meth:`count_tokens` and keeps no form; a backend that tokenizes
        should return its token ids as ``form`` and their
        :func:`~npu_proxy.engine.prefix.fingerprint` as ``prefix``, with an ``owner``
        naming what can read that form.
        """
        return PreparedPrompt(await self.count_tokens(model, request), owner=self.name)

    async def count_text_tokens(self, model: ModelInfo, texts: list[str]) -> list[int]:
        """Tokens of each plain text (no template), with the model's tokenizer."""
        raise CapabilityError(f"the {self.name} backend cannot count tokens of plain text")

    # The model's template and tokenizer as llama.cpp's server offers them
    # (/apply-template, /tokenize, /detokenize): what Ollama's ``context`` is made of.

    async def render(self, model: ModelInfo, request: GenerationRequest) -> str:
        """The prompt of ``request`` as text, exactly as ``model`` reads it (its chat
        template applied to ``messages``; a raw ``prompt`` as it is)."""
        raise CapabilityError(f"the {self.name} backend cannot show a rendered prompt")

    async def tokenize(self, model: ModelInfo, text: str) -> list[int]:
        """The token ids of ``text`` with the model's tokenizer; no special token is
        added, and the markers a template wrote read as the special tokens they are."""
        raise CapabilityError(f"the {self.name} backend cannot tokenize text")

    async def detokenize(self, model: ModelInfo, ids: list[int]) -> str:
        """The text of token ids (special tokens written out), the inverse of
        :meth:`tokenize`. Raises InvalidRequestError for ids the tokenizer lacks."""
        raise CapabilityError(f"the {self.name} backend cannot detokenize")

    @abc.abstractmethod
    async def load(self, model: ModelInfo) -> LoadedModel:
        """Load ``model`` onto the device and return it ready to generate.

        Raises :class:`~npu_proxy.engine.errors.ModelLoadError` with a message safe to
        show a client (no paths) when the model cannot be loaded here.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release backend-wide resources at shutdown."""

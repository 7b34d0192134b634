"""The engine: model lookup -> token count -> routing -> device queue -> loaded model -> events.

Dialects call :meth:`Engine.generate` (and :meth:`Engine.embed`); what they get back
already knows where it runs and why (:class:`Route`), so response headers tell the
truth before the first byte. No HTTP and no OpenVINO here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType

from ..settings import Settings
from .backend import Backend, LoadedModel
from .errors import (
    BackendError,
    BusyError,
    CapabilityError,
    EngineError,
    InferenceTimeoutError,
    InvalidRequestError,
    ModelLoadError,
    NoDeviceError,
    PromptTooLongError,
)
from .events import (
    DeviceChanged,
    EmbeddingFinished,
    EventBus,
    FirstToken,
    GenerationFailed,
    GenerationFinished,
    QueueChanged,
    RouteDecided,
)
from .history import fit_history, keep_end
from .lifecycle import ModelLifecycle, Residency, ResidencyState
from .prefix import PrefixDirectory
from .routing import DeviceState, RouteReason, RoutingContext, RoutingPolicy
from .scheduler import DeviceQueue, Ticket
from .store import ModelStore
from .types import (
    Capability,
    DeviceInfo,
    Done,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelInfo,
    PreparedPrompt,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request runs and why: the ``X-NPU-Proxy-*`` headers."""

    device: str
    reason: RouteReason | str
    token_count: int
    #: prompt tokens cut to fit the context (``X-NPU-Proxy-Truncated``, sent when > 0)
    truncated: int = 0

    def headers(self) -> dict[str, str]:
        headers = {
            "X-NPU-Proxy-Device": self.device,
            "X-NPU-Proxy-Route-Reason": str(self.reason),
            "X-NPU-Proxy-Token-Count": str(self.token_count),
        }
        if self.truncated:
            headers["X-NPU-Proxy-Truncated"] = str(self.truncated)
        return headers


@dataclass(frozen=True, slots=True)
class Embedding:
    """An embedding result together with its route."""

    model: ModelInfo
    route: Route
    result: EmbeddingResult


class Generation:
    """An admitted generation: holds a device slot and a loaded model until closed.

    Iterate it for events (ending with :class:`Done`), and close it (``async with`` or
    :meth:`aclose`) so the slot is freed even if iteration never started. Closing early
    cancels the generation at the next token; only this request is affected.
    """

    def __init__(
        self,
        engine: Engine,
        request: GenerationRequest,
        model: ModelInfo,
        route: Route,
        ticket: Ticket,
        loaded: LoadedModel,
        load_duration: int,
        started: int,
        source: AsyncIterator[GenerationEvent] | None = None,
        opened: float | None = None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.model = model
        self.route = route
        self._ticket = ticket
        self._loaded = loaded
        self._load_duration = load_duration
        self._started = started
        #: the events, when the backend's ``open`` already started them, and when
        #: (``perf_counter``) it began: the time to the first token counts from there
        self._source = source
        self._opened = opened
        self._iterator: AsyncIterator[GenerationEvent] | None = None
        self._closed = False
        #: the final event, once the generation ends normally
        self.done: Done | None = None

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        if self._iterator is not None:
            raise RuntimeError("a generation can be iterated once")
        self._iterator = self._events()
        return self._iterator

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the generation (if running) and free the slot. Idempotent."""
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        elif self._source is not None:
            # opened but never iterated: the device holds the request until it is closed
            with contextlib.suppress(Exception):
                await self._source.aclose()  # type: ignore[attr-defined]
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ticket.release()
        self.engine.lifecycle.release(
            self.route.device, self.model.name, self.request.keep_alive
        )

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        engine, model, device = self.engine, self.model.name, self.route.device
        deadline = asyncio.get_running_loop().time() + engine.settings.inference_timeout
        source = self._source or self._loaded.generate(self.request)
        began = self._opened or time.perf_counter()
        last: float | None = None
        gaps: list[float] = []
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(source)
                except StopAsyncIteration:
                    raise BackendError("the generation ended without a result") from None
                except TimeoutError:
                    engine.bus.emit(GenerationFailed(model, device, "timeout"))
                    message = (
                        f"generation took longer than {engine.settings.inference_timeout:g} s"
                    )
                    engine.record_failure(device, f"{model}: {message}")
                    raise InferenceTimeoutError(message) from None
                now = time.perf_counter()
                if isinstance(event, TextDelta | ThinkingDelta | ToolCallDelta):
                    if last is None:
                        engine.bus.emit(FirstToken(model, device, now - began))
                    else:
                        gaps.append(now - last)
                    last = now
                    yield event
                    continue
                self.done = self._complete(event)
                yield self.done
                return
        except EngineError as exc:
            if not isinstance(exc, InferenceTimeoutError):
                engine.bus.emit(GenerationFailed(model, device, exc.code))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            log.exception("generation of %s on %s failed", model, device)
            engine.bus.emit(GenerationFailed(model, device, "backend_error"))
            engine.record_failure(device, f"{model}: the backend failed during generation")
            raise BackendError(f"the {device} backend failed during generation") from exc
        finally:
            # A second cancellation (Starlette re-delivers a disconnect) may interrupt
            # the close; the slot is freed and the outcome reported all the same.
            interrupted = False
            try:
                await source.aclose()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                interrupted = True
            except Exception:
                log.debug("closing the %s stream failed", device, exc_info=True)
            self._finish()
            if self.done is None:
                engine.bus.emit(GenerationFailed(model, device, "cancelled"))
            else:
                if self.request.prepared is not None:
                    engine.prefixes.record(model, self.request.prepared.prefix, device)
                usage = self.done.usage
                decode = usage.decode_duration / 1e9
                engine.bus.emit(
                    GenerationFinished(
                        model=model,
                        device=device,
                        finish_reason=self.done.finish_reason.value,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        cached_tokens=usage.cached_tokens,
                        duration=(usage.prefill_duration + usage.decode_duration) / 1e9,
                        tokens_per_second=(
                            usage.completion_tokens / decode if decode > 0 else 0.0
                        ),
                        inter_token_latencies=tuple(gaps),
                    )
                )
            if interrupted:
                raise asyncio.CancelledError

    def _complete(self, done: Done) -> Done:
        # The engine measured the load and the wall-clock total; the backend measured
        # the device work. Each fact comes from the one that saw it.
        usage = replace(
            done.usage,
            load_duration=done.usage.load_duration or self._load_duration,
            total_duration=time.perf_counter_ns() - self._started,
        )
        return replace(done, usage=usage)


def affinity_key(request: GenerationRequest) -> str:
    """A key that stays the same across a conversation's turns: its leading system
    messages and first user message (a raw prompt: its first 1024 characters)."""
    digest = hashlib.blake2b(request.model.encode(), digest_size=12)
    if request.messages is None:
        digest.update((request.prompt or "")[:1024].encode("utf-8", "surrogatepass"))
        return digest.hexdigest()
    for message in request.messages:
        digest.update(f"{message.role}\0{message.content}\0".encode("utf-8", "surrogatepass"))
        if message.role == "user":
            break
    return digest.hexdigest()


class Engine:
    """Routes, queues and runs requests on the registered backends (one per device)."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        backends: list[Backend],
        policy: RoutingPolicy,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends: dict[str, Backend] = {b.device: b for b in backends}
        self.policy = policy
        self.bus = bus or EventBus()
        self.devices: dict[str, DeviceInfo] = {}
        self.queues: dict[str, DeviceQueue] = {
            b.device: DeviceQueue(b.device, b.max_parallel, settings.max_queue, self._queued)
            for b in backends
        }
        #: which devices have read which prompt prefixes (for prefix affinity)
        self.prefixes = PrefixDirectory()
        self.lifecycle = ModelLifecycle(self.backends, self.bus, settings.keep_alive,
                                        on_unload=self.prefixes.forget)
        self._probed = asyncio.Event()
        self._probe_task: asyncio.Task[dict[str, DeviceInfo]] | None = None
        #: the last failure on each device (timeouts, backend errors), for /health
        self.last_failure: dict[str, tuple[datetime, str]] = {}
        self._last_load_error: ModelLoadError | None = None

    # --- startup and devices ----------------------------------------------------------

    def start(self) -> None:
        """Start probing devices in the background; requests wait for the result."""
        #: the loop the engine serves on (for tests and thread-side callers)
        self.loop = asyncio.get_running_loop()
        if self._probe_task is None:
            self._probe_task = self.loop.create_task(self.probe())

    async def probe(self) -> dict[str, DeviceInfo]:
        """Ask every backend about its device (concurrently, never raising)."""

        async def one(backend: Backend) -> DeviceInfo:
            try:
                return await backend.probe()
            except Exception as exc:
                log.exception("probing %s failed", backend.device)
                return DeviceInfo(backend.device, present=False, error=f"probe failed: {exc}")

        infos = await asyncio.gather(*(one(b) for b in self.backends.values()))
        self.devices = {info.device: info for info in infos}
        for info in infos:
            if not info.present:
                log.warning("device %s is not available: %s", info.device, info.error)
        self._probed.set()
        return self.devices

    def report_device(self, info: DeviceInfo) -> None:
        """Replace what is known of ``info.device`` while the server runs.

        For backends whose device comes and goes (a remote engine whose circuit opened
        or closed): routing stops or resumes choosing it at once, ``/health`` shows
        ``info.error``, and a change of presence is a :class:`DeviceChanged` event.
        Unknown devices are ignored. Call on the event loop.
        """
        if info.device not in self.backends:
            return
        before = self.devices.get(info.device)
        self.devices[info.device] = info
        if before is None or before.present != info.present:
            self.bus.emit(DeviceChanged(info.device, info.present, info.error))

    def record_failure(self, device: str, message: str) -> None:
        """Remember a wedged or failed generation so /health can report it."""
        self.last_failure[device] = (datetime.now(UTC), message)

    @property
    def probing(self) -> bool:
        return not self._probed.is_set()

    def _queued(self, device: str, waiting: int, in_flight: int) -> None:
        self.bus.emit(QueueChanged(device, waiting, in_flight))

    # --- routing ------------------------------------------------------------------------

    def _states(self, model: ModelInfo, prefix: tuple[int, ...] = (),
                context: int = 0) -> dict[str, DeviceState]:
        """What routing sees of each device for ``model``. ``context`` (when above 0) is
        the request's context: a local device cannot read a prompt that fills it, so its
        prompt limit is at most ``context - 1``; a remote engine has its own context
        and says so through :meth:`Backend.prompt_limit`."""
        states = {}
        loaded = {r.device for r in self.lifecycle.find(model.name) if r.is_loaded}
        held = self.prefixes.holders(model.name, prefix) if prefix else {}
        for device, backend in self.backends.items():
            info = self.devices.get(device)
            queue = self.queues[device]
            limit = backend.prompt_limit(model)
            if context > 0 and not backend.remote:
                limit = context - 1 if limit is None else min(limit, context - 1)
            states[device] = DeviceState(
                device=device,
                present=bool(info and info.present),
                supports_model=backend.supports(model),
                queue_depth=queue.waiting,
                queue_limit=queue.limit,
                in_flight=queue.in_flight,
                max_parallel=queue.slots,
                prompt_limit=limit,
                model_loaded=device in loaded,
                prefix_tokens=held.get(device, 0) if device in loaded else 0,
                remote=backend.remote,
            )
        return states

    def _remote_takes(self, model: ModelInfo, tokens: int) -> bool:
        """Whether a present remote engine serves ``model`` and accepts ``tokens`` prompt
        tokens: then a prompt too long for the local context overflows to it instead of
        being refused or cut."""
        for device, backend in self.backends.items():
            info = self.devices.get(device)
            if not (backend.remote and info is not None and info.present
                    and backend.supports(model)):
                continue
            limit = backend.prompt_limit(model)
            if limit is None or tokens <= limit:
                return True
        return False

    def _counting_backend(self, model: ModelInfo, preferred: str) -> Backend:
        first = self.backends.get(preferred)
        if first is not None and first.supports(model):
            return first
        for backend in self.backends.values():
            if backend.supports(model):
                return backend
        raise NoDeviceError(f"no installed backend can run '{model.name}' ({model.format})")

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens of ``request`` with the model's tokenizer, template applied."""
        await self._probed.wait()
        model = self.resolve(request.model, Capability.COMPLETION)
        backend = self._counting_backend(model, self.settings.device)
        return (await backend.prepare(model, request)).token_count

    async def render(self, request: GenerationRequest) -> str:
        """``request``'s prompt as its model reads it (:meth:`Backend.render`), by the
        backend that counts its tokens; CapabilityError if that backend cannot."""
        model, backend = await self._text_backend(request.model)
        return await backend.render(model, request)

    async def tokenize(self, name: str, text: str) -> list[int]:
        """``text``'s token ids with model ``name``'s tokenizer (:meth:`Backend.tokenize`)."""
        model, backend = await self._text_backend(name)
        return await backend.tokenize(model, text)

    async def detokenize(self, name: str, ids: list[int]) -> str:
        """The text of token ids of model ``name`` (:meth:`Backend.detokenize`)."""
        model, backend = await self._text_backend(name)
        return await backend.detokenize(model, ids)

    async def _text_backend(self, name: str) -> tuple[ModelInfo, Backend]:
        await self._probed.wait()
        model = self.resolve(name, Capability.COMPLETION)
        return model, self._counting_backend(model, self.settings.device)

    def resolve(self, name: str, capability: Capability) -> ModelInfo:
        """The model called ``name``, which must have ``capability``."""
        model = self.store.resolve(name)
        if not model.can(capability):
            what = {
                Capability.COMPLETION: "generate text",
                Capability.EMBEDDING: "generate embeddings",
            }.get(capability, f"do {capability.value}")
            raise CapabilityError(f"\"{model.name}\" does not support {what}", param="model")
        return model

    async def _admit(
        self,
        model: ModelInfo,
        token_count: int,
        preferred: str,
        excluded: dict[str, RouteReason] | None = None,
        affinity_key: str = "",
        prefix: tuple[int, ...] = (),
        context: int = 0,
    ) -> tuple[Route, Ticket, LoadedModel, int]:
        """Route, queue and load, falling back past full queues and failed loads.

        ``excluded`` holds devices already ruled out (and collects the new ones);
        ``context`` bounds what local devices accept (see :meth:`_states`).
        """
        await self._probed.wait()
        excluded = {} if excluded is None else excluded
        while True:
            ctx = RoutingContext(
                model=model,
                token_count=token_count,
                preferred_device=preferred,
                fallback_device=self.settings.fallback_device,
                devices=self._states(model, prefix, context),
                excluded=dict(excluded),
                prefix=prefix,
                affinity_key=affinity_key,
            )
            decision = self.policy.choose(ctx)
            if decision.device is None or decision.device not in self.backends:
                raise self._no_route(ctx, decision.reason)
            device = decision.device
            # The reason the *first* choice was passed over is the one clients care about.
            reason = next(iter(excluded.values())) if excluded else decision.reason
            try:
                ticket = self.queues[device].reserve()
            except BusyError:
                excluded[device] = RouteReason.QUEUE_FULL
                continue
            try:
                await ticket.acquire()
                loaded, load_ns = await self.lifecycle.acquire(device, model)
            except ModelLoadError as exc:
                ticket.release()
                excluded[device] = RouteReason.LOAD_FAILED
                log.warning("falling back from %s: %s", device, exc.message)
                self._last_load_error = exc
                continue
            except BaseException:
                ticket.release()
                raise
            route = Route(device, reason, token_count)
            self.bus.emit(RouteDecided(model.name, device, reason, token_count))
            return route, ticket, loaded, load_ns

    def _no_route(self, ctx: RoutingContext, reason: RouteReason | str) -> EngineError:
        if RouteReason.QUEUE_FULL in ctx.excluded.values():
            retry = max(1, min(60, max(q.waiting for q in self.queues.values()) // 4))
            return BusyError("server busy: every device queue is full", retry_after=retry)
        if RouteReason.LOAD_FAILED in ctx.excluded.values():
            last = self._last_load_error
            return ModelLoadError(last.message if last else f"could not load {ctx.model.name}")
        limits = [
            s.prompt_limit
            for s in ctx.devices.values()
            if s.present and s.supports_model and s.prompt_limit is not None
        ]
        if limits and all(s.prompt_limit is not None for s in ctx.devices.values()
                          if s.present and s.supports_model):
            return PromptTooLongError(ctx.token_count, max(limits), "any available device")
        present = [d for d, s in ctx.devices.items() if s.present]
        if not present:
            absent = ", ".join(
                f"{d} ({i.error or 'absent'})" for d, i in sorted(self.devices.items())
            ) or "no backend plugins are loaded"
            return NoDeviceError(f"no device is available: {absent}")
        return NoDeviceError(
            f"no available device ({', '.join(present)}) can run '{ctx.model.name}'"
        )

    # --- requests ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Generation:
        """Admit a generation: returns once a device slot is held and the model is loaded.

        Raises ModelNotFoundError, CapabilityError, InvalidRequestError,
        PromptTooLongError, BusyError, NoDeviceError or ModelLoadError. Cancelling the
        awaiting task (the client left) withdraws the request before it reaches a device.
        """
        started = time.perf_counter_ns()
        request = replace(request, options=request.options.checked())
        model = self.resolve(request.model, Capability.COMPLETION)
        if request.images and not model.can(Capability.VISION):
            raise CapabilityError(
                f"\"{model.name}\" is a text-only model and does not accept images",
                param="images",
            )
        # One policy for every dialect: tools and thinking only for models whose chat
        # template handles them (never tools pasted into a prompt in one dialect and
        # refused in another), unless generic tool prompts are turned on for all.
        if (request.tools and request.tool_choice != "none" and not model.can(Capability.TOOLS)
                and not self.settings.generic_tools):
            raise CapabilityError(f"\"{model.name}\" does not support tools", param="tools")
        if request.think not in (None, False) and not model.can(Capability.THINKING):
            raise CapabilityError(f"\"{model.name}\" does not support thinking", param="think")
        await self._probed.wait()
        backend = self._counting_backend(model, self.settings.device)
        # The prompt is rendered and tokenized here, once: the context check, routing
        # and the backend's generation all use this one result.
        prepared = await backend.prepare(model, replace(request, prepared=None))
        context = min(model.context_length, request.options.num_ctx or model.context_length)
        # A remote engine with room for the whole prompt takes it whole (routing sends it
        # there) rather than the conversation losing its start or the client a 400.
        overflow = self._remote_takes(model, prepared.token_count)
        if request.truncate and model.context_length > 0 and not overflow:
            request, prepared = await self._fit_context(backend, model, request, prepared)
        request = replace(request, prepared=prepared)
        tokens = prepared.token_count
        if tokens >= context > 0 and not overflow:
            where = f"the context of {model.name}" + (
                " (num_ctx)" if context < model.context_length else "")
            raise PromptTooLongError(tokens, context, where)
        options = request.options
        if options.max_tokens is None and self.settings.max_tokens > 0:
            # No limit asked for: a small model can ramble until the context is full
            # (minutes); bound it, as Ollama's default context bounds it.
            bounded = replace(options, max_tokens=self.settings.max_tokens)
            request = replace(request, options=bounded)
        excluded: dict[str, RouteReason] = {}
        key = affinity_key(request)
        failure: EngineError | None = None  # the last device's failure before output
        while True:
            try:
                route, ticket, loaded, load_ns = await self._admit(
                    model, tokens, self.settings.device, excluded, key, prepared.prefix,
                    context)
            except EngineError:
                if failure is None:
                    raise
                raise failure from None  # nothing left to fail over to: say what failed
            opened = time.perf_counter()
            try:
                source = await loaded.open(request)
            except EngineError as exc:
                ticket.release()
                self.lifecycle.release(route.device, model.name, request.keep_alive)
                if exc.status < 500:
                    raise
                log.warning("%s failed before any output, trying another device: %s",
                            route.device, exc.message)
                self.bus.emit(GenerationFailed(model.name, route.device, exc.code))
                self.record_failure(route.device, f"{model.name}: {exc.message}")
                excluded[route.device] = RouteReason.FAILOVER
                failure = exc
                continue
            except BaseException:
                ticket.release()
                self.lifecycle.release(route.device, model.name, request.keep_alive)
                raise
            route = replace(route, truncated=prepared.dropped)
            return Generation(
                self, request, model, route, ticket, loaded, load_ns, started, source, opened)

    async def _fit_context(
        self, backend: Backend, model: ModelInfo, request: GenerationRequest,
        prepared: PreparedPrompt,
    ) -> tuple[GenerationRequest, PreparedPrompt]:
        """``request`` with its oldest messages dropped so that the prompt fits the
        context (``num_ctx`` when smaller) and leaves room to answer: ``max_tokens``, or
        a quarter of the context, at most half of it. A conversation that cannot leave
        that room but fits at all keeps as much as fits. One that does not fit even as
        its system prompt and last message, or a raw prompt too long, keeps the end of
        that last message (of the prompt) that leaves the room (:func:`keep_end`); one
        that cannot is left as it is (and refused). Returns the request and its prepared
        prompt, whose ``dropped`` counts the tokens cut."""
        limit = min(model.context_length, request.options.num_ctx or model.context_length)
        reserve = min(request.options.max_tokens or limit // 4, limit // 2)
        if prepared.token_count + reserve <= limit:
            return request, prepared
        # keyed by repr: messages hold tool calls whose arguments (dicts) do not hash
        prepared_for = {repr((request.messages, request.prompt)): prepared}

        async def count(candidate: GenerationRequest) -> int:
            key = repr((candidate.messages, candidate.prompt))
            if key not in prepared_for:
                prepared_for[key] = await backend.prepare(model, replace(candidate, prepared=None))
            return prepared_for[key].token_count

        async def with_room(candidate: GenerationRequest) -> bool:
            return await count(candidate) + reserve <= limit

        async def at_all(candidate: GenerationRequest) -> bool:
            return await count(candidate) < limit

        fitted: GenerationRequest | None = None
        if request.messages:
            def of(messages: tuple[Message, ...]) -> GenerationRequest:
                return replace(request, messages=messages)

            kept = await fit_history(request.messages, lambda m: with_room(of(m))) or (
                await fit_history(request.messages, lambda m: at_all(of(m))))
            fitted = None if kept is None else of(kept)
        if fitted is None:
            fitted = await keep_end(request, with_room)
        if fitted is None or fitted == request:
            return request, prepared
        final = prepared_for[repr((fitted.messages, fitted.prompt))]
        dropped = prepared.token_count - final.token_count
        log.info("cut %d tokens from a prompt (%d messages dropped) to fit %s's context of "
                 "%d tokens", dropped, len(request.messages or ()) - len(fitted.messages or ()),
                 model.name, limit)
        return fitted, replace(final, dropped=dropped)

    def embedding_model(self, name: str | None = None) -> ModelInfo:
        """The embedding model called ``name``; ``None``: the server's default
        (``NPU_PROXY_EMBEDDING_MODEL``), for dialects whose requests may name none."""
        return self.resolve(name or self.settings.embedding_model, Capability.EMBEDDING)

    async def embed(self, request: EmbeddingRequest) -> Embedding:
        """Embed ``request.inputs`` on the embedding device (or its fallback).

        ``request.model`` None embeds with :meth:`embedding_model`'s default. More than
        ``NPU_PROXY_MAX_EMBEDDING_INPUTS`` inputs are refused (InvalidRequestError).
        """
        if len(request.inputs) > self.settings.max_embedding_inputs:
            raise InvalidRequestError(
                f"too many inputs: {len(request.inputs)}; at most "
                f"{self.settings.max_embedding_inputs} per request "
                "(NPU_PROXY_MAX_EMBEDDING_INPUTS)", param="input")
        started = time.perf_counter_ns()
        model = self.embedding_model(request.model)
        if request.dimensions is not None and not (
            0 < request.dimensions <= (model.embedding_length or request.dimensions)
        ):
            raise InvalidRequestError(
                f"dimensions must be between 1 and {model.embedding_length}", param="dimensions"
            )
        excluded: dict[str, RouteReason] = {}
        failure: EngineError | None = None  # the last device's failure
        while True:
            try:
                route, ticket, loaded, load_ns = await self._admit(
                    model, 0, self.settings.embedding_device, excluded)
            except EngineError:
                if failure is None:
                    raise
                raise failure from None  # nothing left to fail over to: say what failed
            try:
                result = await loaded.embed(request)
                break
            except EngineError as exc:
                if exc.status < 500:
                    raise
                error = exc
            except Exception as exc:
                log.exception("embedding with %s failed", model.name)
                error = BackendError(f"the {route.device} backend failed to embed")
                error.__cause__ = exc
            finally:
                ticket.release()
                self.lifecycle.release(route.device, model.name, request.keep_alive)
            # An embedding is all or nothing, so a failed device is simply passed over.
            log.warning("%s failed to embed, trying another device: %s",
                        route.device, error.message)
            self.record_failure(route.device, f"{model.name}: {error.message}")
            excluded[route.device] = RouteReason.FAILOVER
            failure = error
        total = time.perf_counter_ns() - started
        result = replace(result, load_duration=load_ns, total_duration=total)
        route = replace(route, token_count=result.prompt_tokens)
        self.bus.emit(
            EmbeddingFinished(
                model.name,
                route.device,
                len(request.inputs),
                result.prompt_tokens,
                total / 1e9,
            )
        )
        return Embedding(model, route, result)

    async def load(self, name: str, keep_alive: float | None) -> tuple[ModelInfo, Route, int]:
        """Load ``name`` without generating (Ollama's empty prompt). Returns the load ns."""
        model = self.store.resolve(name)
        preferred = (
            self.settings.embedding_device
            if model.can(Capability.EMBEDDING) and not model.can(Capability.COMPLETION)
            else self.settings.device
        )
        route, ticket, _, load_ns = await self._admit(model, 0, preferred)
        ticket.release()
        self.lifecycle.release(route.device, model.name, keep_alive)
        return model, route, load_ns

    async def unload(self, name: str) -> bool:
        """Unload ``name`` everywhere (once its running requests finish)."""
        model = self.store.resolve(name)
        return await self.lifecycle.unload(model.name)

    def running(self) -> list[Residency]:
        """Resident models (loaded or loading), for ``/api/ps``."""
        return [r for r in self.lifecycle.residents() if r.state is not ResidencyState.FAILED]

    async def close(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
            with contextlib.suppress(BaseException):
                await self._probe_task
        await self.lifecycle.close()
        for backend in self.backends.values():
            try:
                await backend.close()
            except Exception:
                log.exception("closing backend %s failed", backend.name)


__all__ = ["Embedding", "Engine", "FinishReason", "Generation", "Route"]

"""Several generations at once on one device: ``ContinuousBatchingPipeline`` behind a
single stepping thread.

GenAI's continuous-batching pipeline takes requests with ``add_request`` (one
``GenerationHandle`` each) and advances every running request by one token per
``step()``. :class:`ContinuousBatchingGenerator` owns the pipeline and one daemon
thread that is the only caller of ``add_request``/``step``/``read``: it admits new
requests, steps while any is active, reads each handle's new token ids, detokenizes
them incrementally (:class:`IncrementalDetokenizer`) and hands the text to that
request's asyncio queue with ``call_soon_threadsafe``. A consumer that leaves has its
handle cancelled; GenAI frees the sequence's KV blocks at the end of the next step and
only then does ``aclose()`` return, so the slot is free for the next admitted request
while the other requests go on.

Note: in openvino-genai 2026.4 the Python binding of ``step()`` holds the GIL for the
whole step (``add_request`` and ``generate`` release it), so with this class the event
loop waits up to one step (tens of ms with a small model on CPU, hundreds for a long
prompt) while streams run. The backends therefore run the real pipeline in a worker
process (:mod:`~npu_proxy_openvino.batching_process`); this class serves injected
pipelines and ``NPU_PROXY_BATCHING_PROCESS=0``. :class:`IncrementalDetokenizer`,
:func:`scheduler_config` and the outcome figures are shared with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .options import GenerationSpec, apply_options
from .runner import Outcome
from .streaming import Finished, wait_uncancellable

log = logging.getLogger(__name__)

#: Compile properties that keep a batched request's answer what it is alone, on every
#: CPU. With the default u8 KV cache, 11 of 26 greedy answers changed with the batch they
#: ran in (f16: none, and 4 streams ran faster). On CPUs with AMX or AVX-512 BF16 the
#: default precision is bf16 and activations are quantised on the fly: there all four
#: batched greedy answers differed from their solo runs, and embeddings of a batch from
#: single ones by 9e-4. f32 without dynamic quantisation restores both; CPUs without
#: those units (the Core Ultra laptops this serves) run f32 anyway and lose nothing.
EXACT_CPU_NUMERICS: dict[str, str] = {
    "KV_CACHE_PRECISION": "f16",
    "INFERENCE_PRECISION_HINT": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
}


def scheduler_config(max_parallel: int, kv_cache_gb: int) -> Any:
    """A ``SchedulerConfig`` for ``max_parallel`` sequences and a KV budget in GB.

    ``kv_cache_gb == 0`` lets GenAI grow the cache on demand; otherwise the cache is
    allocated once at that size. ``dynamic_split_fuse`` (GenAI's default) mixes prompt
    chunks with decode steps, so a long prompt does not stall the other streams.
    """
    import openvino_genai

    config = openvino_genai.SchedulerConfig()
    config.max_num_seqs = max(max_parallel, 1)
    config.cache_size = kv_cache_gb
    config.dynamic_split_fuse = True
    return config


class IncrementalDetokenizer:
    """Token ids in, text out, never splitting a multi-byte character.

    Decodes a short window (the tokens since the last emitted text, plus the few
    before them for context: tokenizers that drop a leading space need it) and emits
    what the window adds. Text ending in U+FFFD is an incomplete UTF-8 sequence and is
    held until the next token completes it.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # end of what has been emitted

    def feed(self, ids: list[int]) -> str:
        """The text that ``ids`` (appended to the earlier ones) completes."""
        self._ids.extend(ids)
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def finish(self) -> str:
        """What is still held back (an incomplete character comes out as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids)) if ids else ""


@dataclass(eq=False)
class _Request:
    """One generation's state, shared by its consumer and the stepping thread."""

    id: int
    prompt: str
    config: Any
    loop: asyncio.AbstractEventLoop
    detokenizer: IncrementalDetokenizer
    queue: asyncio.Queue[str | Finished[Outcome] | BaseException] = field(
        default_factory=asyncio.Queue
    )
    done: asyncio.Event = field(default_factory=asyncio.Event)
    handle: Any = None
    #: set by the consumer (any thread); the stepping thread cancels the handle
    leaving: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: Any = None
    start_ns: int = field(default_factory=time.perf_counter_ns)
    first_ns: int = 0
    outcome: Outcome | None = None

    def deliver(self, item: str | Finished[Outcome] | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.leaving.set()

    def settle(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(self.done.set)


class QueuedRequest(Protocol):
    """What a request stream reads: its items, its end, and how it went."""

    queue: asyncio.Queue[Any]
    done: asyncio.Event
    outcome: Outcome | None


class RequestStream:
    """The pieces of one batched generation, then one :class:`Finished` (async iterator).

    Same contract as :func:`~npu_proxy_openvino.streaming.stream_in_thread`: an error of
    the device is raised here; ``aclose()`` (or leaving the iteration through an
    exception or task cancellation) cancels the request and returns once the device has
    freed its sequence. :attr:`outcome` is set once the device is done with it,
    cancelled generations included. Subclasses say how a request starts and leaves.
    """

    def __init__(self, request: QueuedRequest) -> None:
        self._request = request
        self._closed = False

    @property
    def outcome(self) -> Outcome | None:
        return self._request.outcome

    def __aiter__(self) -> RequestStream:
        return self

    async def _begin(self) -> None:
        """Called before each read; a stream whose request is sent lazily sends it here."""

    async def _leave(self) -> None:
        """Cancel an unfinished request; return once its sequence is freed."""
        raise NotImplementedError

    async def __anext__(self) -> str | Finished[Outcome]:
        if self._closed:
            raise StopAsyncIteration
        try:
            await self._begin()
            item = await self._request.queue.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        if isinstance(item, Finished):
            self._closed = True
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._closed = True
        if not self._request.done.is_set():
            await self._leave()


class BatchedStream(RequestStream):
    """A request of the in-process :class:`ContinuousBatchingGenerator`."""

    def __init__(self, owner: ContinuousBatchingGenerator, request: _Request) -> None:
        super().__init__(request)
        self._owner = owner
        self._batched = request

    async def _leave(self) -> None:
        self._batched.leaving.set()
        self._owner.wake()
        await wait_uncancellable(self._batched.done)


class ContinuousBatchingGenerator:
    """:class:`~npu_proxy_openvino.runner.TextGenerator` over a ``ContinuousBatchingPipeline``.

    Up to the pipeline's ``max_num_seqs`` generations run at once, each with its own
    ``GenerationConfig`` (sampling, seed, stop strings, structured output). The
    stepping thread starts with the first request and parks while nothing is active.
    """

    def __init__(self, pipeline: Any, *, name: str = "npu-proxy-batching") -> None:
        import openvino_genai

        self._pipe = pipeline
        self._tokenizer = pipeline.get_tokenizer()
        self._running = openvino_genai.GenerationStatus.RUNNING
        self._ignored = openvino_genai.GenerationStatus.IGNORED
        self._length = openvino_genai.GenerationFinishReason.LENGTH
        self._ids = itertools.count()
        self._incoming: list[_Request] = []
        self._active: list[_Request] = []
        self._wake = threading.Condition()
        self._closed = False
        self._name = name
        self._thread: threading.Thread | None = None

    def new_config(self) -> Any:
        return self._pipe.get_config()

    def configure(self, spec: GenerationSpec) -> Any:
        return apply_options(self.new_config(), spec.options,
                             max_new_tokens=spec.max_new_tokens,
                             structured_schema=spec.structured_schema)

    def stream(self, prompt: str, config: Any) -> BatchedStream:
        """Queue a generation of ``prompt``; its pieces arrive on the returned stream."""
        request = _Request(
            id=next(self._ids), prompt=prompt, config=config,
            loop=asyncio.get_running_loop(),
            detokenizer=IncrementalDetokenizer(self._tokenizer),
        )
        with self._wake:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self._incoming.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return BatchedStream(self, request)

    def wake(self) -> None:
        """Have the stepping thread look at the requests now (a consumer left)."""
        with self._wake:
            self._wake.notify()

    @property
    def active(self) -> int:
        """Requests the pipeline holds now (admitted and not yet freed)."""
        return len(self._active)

    def close(self) -> None:
        """Cancel what is left, stop the stepping thread and drop the pipeline."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._pipe = None

    # --- the stepping thread ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._incoming or self._active or self._closed):
                    self._wake.wait()
                incoming, self._incoming = self._incoming, []
                closed = self._closed
            for request in incoming:
                self._admit(request)
            if closed:
                for request in self._active:
                    request.leaving.set()
            for request in self._active:
                if request.leaving.is_set() and not request.cancelled:
                    request.cancelled = True
                    request.handle.cancel()
            if not self._active:
                if closed:
                    return
                continue
            try:
                self._pipe.step()
            except Exception as exc:  # the device failed: every request it held fails
                self._fail_all(exc)
                continue
            self._collect()

    def _admit(self, request: _Request) -> None:
        if request.leaving.is_set():
            request.outcome = _outcome(request, None)
            request.settle()
            return
        try:
            request.handle = self._pipe.add_request(request.id, request.prompt, request.config)
        except Exception as exc:
            request.deliver(exc)
            request.settle()
            return
        request.start_ns = time.perf_counter_ns()
        self._active.append(request)

    def _collect(self) -> None:
        still: list[_Request] = []
        ended: list[_Request] = []
        for request in self._active:
            handle = request.handle
            if not request.cancelled:
                ids: list[int] = []
                while handle.can_read():
                    for output in handle.read().values():
                        ids.extend(output.generated_ids)
                        request.finish_reason = output.finish_reason
                if ids:
                    request.tokens += len(ids)
                    if not request.first_ns:
                        request.first_ns = time.perf_counter_ns()
                    self._emit(request, request.detokenizer.feed(ids))
            if handle.get_status() == self._running:
                still.append(request)
            else:
                ended.append(request)
        self._active = still
        for request in ended:
            self._end(request)

    def _end(self, request: _Request) -> None:
        """Report a request GenAI has freed (FINISHED, IGNORED or CANCEL after a step)."""
        handle = request.handle
        if handle.get_status() == self._ignored and not request.cancelled:
            request.deliver(RuntimeError("the KV cache is too small for this request"))
        else:
            if not request.cancelled:
                self._emit(request, request.detokenizer.finish())
            request.outcome = _outcome(request, handle)
            if not request.cancelled:
                request.deliver(Finished(request.outcome))
        request.handle = None
        request.settle()

    @staticmethod
    def _emit(request: _Request, text: str) -> None:
        if text:
            request.text.append(text)
            request.deliver(text)

    def _fail_all(self, exc: Exception) -> None:
        log.error("continuous batching step failed: %s", exc)
        failed, self._active = self._active, []
        for request in failed:
            if not request.cancelled:
                request.handle.cancel()
                request.deliver(exc)
            request.outcome = _outcome(request, None)
            request.settle()


class Progress(Protocol):
    """What :func:`_outcome` reads of a request (server-side or in the worker process)."""

    text: list[str]
    tokens: int
    finish_reason: Any
    start_ns: int
    first_ns: int
    cancelled: bool


def _outcome(request: Progress, handle: Any) -> Outcome:
    """Measured figures: GenAI's per-request metrics when it has them, ours otherwise."""
    import openvino_genai

    end = time.perf_counter_ns()
    prompt_tokens = completion_tokens = None
    ttft_ns = (request.first_ns or end) - request.start_ns
    generate_ns = end - request.start_ns
    metrics = None
    if handle is not None:
        try:
            metrics = handle.get_perf_metrics()
        except Exception:  # not set when the request never reached a step
            metrics = None
    if metrics is not None:
        prompt_tokens = int(metrics.get_num_input_tokens())
        completion_tokens = int(metrics.get_num_generated_tokens())
        # Counted from add_request, so a request that waited for a batch slot says so.
        ttft_ns = int(metrics.get_ttft().mean * 1e6) or ttft_ns
        generate_ns = int(metrics.get_generate_duration().mean * 1e6) or generate_ns
    if completion_tokens is None or (request.cancelled and completion_tokens < request.tokens):
        completion_tokens = request.tokens
    if request.cancelled:
        finish = "cancelled"
    elif request.finish_reason == openvino_genai.GenerationFinishReason.LENGTH:
        finish = "length"
    else:
        finish = "stop"
    return Outcome("".join(request.text), finish, prompt_tokens, completion_tokens,
                   ttft_ns, generate_ns)


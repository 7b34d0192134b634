"""Several generations at once on one device: a ``ContinuousBatchingPipeline`` served by
one step loop, in a thread of the server or in a worker process.

:class:`ContinuousBatchingGenerator` is the server's side: it hands each request to the
step loop (:func:`~npu_proxy_openvino.batching_worker.run_steps`) as a command, and
each event the loop reports (a detokenized piece, an outcome, an error) to that
request's asyncio queue with ``call_soon_threadsafe``. A consumer that leaves has its
request cancelled; GenAI frees the sequence's KV blocks at the end of the next step and
only then does ``aclose()`` return, so the slot is free for the next request while the
other requests go on.

Where the loop runs is the placement, chosen by the backend
(``NPU_PROXY_BATCHING_PROCESS``):

- ``"process"`` (:func:`~npu_proxy_openvino.batching_process.worker_process`): in
  openvino-genai 2026.4 the Python binding of ``step()`` holds the GIL for the whole
  step (17-40 ms per decode step with SmolLM2 on 2 CPU cores, up to ~740 ms for a
  prompt), so the pipeline lives in a worker process and the event loop never waits
  for it. A worker that dies fails the requests it held; the next request starts a
  new one.
- ``"thread"`` (:func:`stepping_thread`): a thread of this process steps a pipeline
  built here; the event loop then waits up to one step while streams run. It serves
  pipelines that exist in this process only (imitations of absent devices, a pipeline
  shared by tests) and ``NPU_PROXY_BATCHING_PROCESS=0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .batching_worker import Events, run_steps
from .options import GenerationSpec
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

#: Where the step loop runs (see the module doc).
BatchingPlacement = Literal["thread", "process"]

#: Called with each event of the step loop (on the thread that receives it).
EventHandler = Callable[[tuple[Any, ...]], None]


class WorkerGone(RuntimeError):
    """The step loop ended (its worker process died) while a request was in flight."""


class StepWorker(Protocol):
    """A running step loop: commands in through :meth:`send`, events out through the
    handler it was started with, and a call of its ``on_gone`` once it has ended."""

    #: False once it has ended or is being stopped.
    alive: bool

    @property
    def pid(self) -> int | None:
        """The worker process's id (None for a thread of this process)."""

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a command; never blocks."""

    def stop(self) -> None:
        """Shut the loop down (its requests are cancelled and freed), wait, release all."""


#: ``(on_event, on_gone) -> a running StepWorker`` (blocking: builds the pipeline).
Launcher = Callable[[EventHandler, Callable[["StepWorker"], None]], StepWorker]


class _Mailbox:
    """A thread's inbox that reads like a pipe's end (``poll``, ``recv``)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._next: tuple[Any, ...] | None = None

    def put(self, message: tuple[Any, ...]) -> None:
        self._queue.put(message)

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._next is None:
            try:
                self._next = self._queue.get(block=timeout != 0, timeout=timeout or None)
            except queue.Empty:
                return False
        return True

    def recv(self) -> tuple[Any, ...]:
        message, self._next = self._next, None
        assert message is not None
        return message


class _SteppingThread:
    """:class:`StepWorker` placement ``"thread"``: the step loop on a daemon thread."""

    pid = None

    def __init__(self, pipeline: Any, name: str, on_event: EventHandler,
                 on_gone: Callable[[StepWorker], None], prefix_caching: bool) -> None:
        self._inbox = _Mailbox()
        self._prefix_caching = prefix_caching
        self._on_event = on_event
        self._on_gone = on_gone
        self.alive = True
        self._thread = threading.Thread(target=self._run, args=(pipeline,), name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self, pipeline: Any) -> None:
        try:
            run_steps(pipeline, self._inbox, self._emit, self._prefix_caching)
        except Exception as exc:  # a fault of the loop itself: its requests fail
            log.error("the batching thread failed: %s", exc)
        finally:
            self._on_gone(self)

    def _emit(self, events: Events) -> None:
        for event in events:
            self._on_event(event)

    def send(self, message: tuple[Any, ...]) -> None:
        self._inbox.put(message)

    def stop(self) -> None:
        self.alive = False
        self._inbox.put(("shutdown",))
        if self._thread is not threading.current_thread():
            self._thread.join()


def stepping_thread(pipeline: Any, name: str = "npu-proxy-batching",
                    prefix_caching: bool = False) -> Launcher:
    """Placement ``"thread"``: step ``pipeline`` (built in this process) on a thread.

    ``prefix_caching`` says whether ``pipeline`` was built with it (then outcomes report
    the prompt tokens the cache surely reused)."""

    def launch(on_event: EventHandler, on_gone: Callable[[StepWorker], None]) -> StepWorker:
        return _SteppingThread(pipeline, name, on_event, on_gone, prefix_caching)

    return launch


@dataclass(eq=False)
class _Request:
    """One generation's state on the server's side."""

    id: int
    prompt: tuple[int, ...]
    spec: GenerationSpec
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | Finished[Outcome] | BaseException] = field(
        default_factory=asyncio.Queue
    )
    done: asyncio.Event = field(default_factory=asyncio.Event)
    submitted: bool = False
    leaving: bool = False
    #: the worker that holds it (a request dies with its worker, not with a later one)
    worker: StepWorker | None = None
    outcome: Outcome | None = None

    def deliver(self, item: str | Finished[Outcome] | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def settle(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.done.set)


def _left() -> Outcome:
    """The outcome of a request that never produced one (left early, worker gone)."""
    return Outcome("", "cancelled", None, 0, 0, 0)


class BatchedStream:
    """The pieces of one batched generation, then one :class:`Finished` (async iterator).

    Same contract as :func:`~npu_proxy_openvino.streaming.stream_in_thread`: an error of
    the device is raised here; ``aclose()`` (or leaving the iteration through an
    exception or task cancellation) cancels the request and returns once the device has
    freed its sequence. :attr:`outcome` is set once the device is done with it,
    cancelled generations included. The request reaches the step loop on first read.
    """

    def __init__(self, owner: ContinuousBatchingGenerator, request: _Request) -> None:
        self._owner = owner
        self._request = request
        self._closed = False

    @property
    def outcome(self) -> Outcome | None:
        return self._request.outcome

    def __aiter__(self) -> BatchedStream:
        return self

    async def __anext__(self) -> str | Finished[Outcome]:
        if self._closed:
            raise StopAsyncIteration
        try:
            if not self._request.submitted:
                await self._owner.submit(self._request)
            item = await self._request.queue.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        if isinstance(item, Finished):
            self._closed = True
        return item

    async def aclose(self) -> None:
        self._closed = True
        request = self._request
        if request.done.is_set():
            return
        if not request.submitted:
            request.outcome = _left()
            request.done.set()
            return
        self._owner.cancel(request)
        await wait_uncancellable(request.done)


class ContinuousBatchingGenerator:
    """:class:`~npu_proxy_openvino.runner.TextGenerator` over a ``ContinuousBatchingPipeline``.

    Up to the pipeline's ``max_num_seqs`` generations run at once, each with its own
    ``GenerationConfig`` (sampling, seed, stop strings, structured output), built by the
    step loop from the request's :class:`GenerationSpec`. Build it with :meth:`start`
    (blocking: builds the pipeline where it is placed); :meth:`close` shuts it down.
    Each output carries its tokens' log-probabilities, so it reports logprobs.
    """

    reports_logprobs = True

    def __init__(self, launch: Launcher, placement: BatchingPlacement, *,
                 device: str = "") -> None:
        self.placement = placement
        self._launch = launch
        self._device = device
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._worker: StepWorker | None = None
        self._restart = asyncio.Lock()
        self._closed = False

    @classmethod
    def start(cls, launch: Launcher, placement: BatchingPlacement, *,
              device: str = "") -> ContinuousBatchingGenerator:
        """A generator with its step loop running (blocking); raises if it cannot start."""
        generator = cls(launch, placement, device=device)
        generator._spawn()
        return generator

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id (None for placement ``"thread"`` and after close)."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def active(self) -> int:
        """Requests the step loop holds now (submitted and not yet freed)."""
        with self._lock:
            return len(self._requests)

    def configure(self, spec: GenerationSpec) -> GenerationSpec:
        """The spec itself: the step loop builds the ``GenerationConfig`` from it."""
        return spec

    def stream(self, prompt: tuple[int, ...], config: Any) -> BatchedStream:
        """Queue a generation of the token ids ``prompt`` (``config`` is a
        :class:`GenerationSpec`)."""
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        if not isinstance(config, GenerationSpec):
            raise TypeError("continuous batching takes a GenerationSpec as its config")
        request = _Request(next(self._ids), prompt, config, asyncio.get_running_loop())
        return BatchedStream(self, request)

    async def submit(self, request: _Request) -> None:
        """Send ``request`` to the step loop, starting a new one if the last one died."""
        async with self._restart:
            while True:
                if self._closed:
                    raise RuntimeError("the pipeline is closed")
                worker = self._worker
                if worker is None or not worker.alive:
                    log.warning("the batching worker of %s is gone; starting a new one",
                                self._device)
                    await asyncio.to_thread(self._spawn)
                    continue
                with self._lock:  # the event handler marks a dead worker under this lock
                    if worker.alive:
                        self._requests[request.id] = request
                        request.submitted = True
                        request.worker = worker
                        break
            worker.send(("add", request.id, request.prompt, request.spec))

    def cancel(self, request: _Request) -> None:
        """Have the step loop cancel ``request``; its ``end`` settles it."""
        with self._lock:
            if request.leaving or request.id not in self._requests:
                return
            request.leaving = True
            worker = self._worker
        if worker is not None:
            worker.send(("cancel", request.id))

    def close(self) -> None:
        """Cancel what is left, shut the step loop down and wait for it (blocking)."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    # --- called by the worker's threads -------------------------------------------------

    def _spawn(self) -> None:
        worker = self._launch(self._on_event, self._on_gone)
        old, self._worker = self._worker, worker
        if old is not None:
            old.stop()

    def _on_event(self, event: tuple[Any, ...]) -> None:
        """Hand one event of the step loop to its request (cheap work only)."""
        kind, request_id = event[0], event[1]
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                return
            if kind != "text":
                del self._requests[request_id]
        if kind == "text":
            if not request.leaving:
                request.deliver(event[2])
        elif kind == "end":
            request.outcome = event[2]
            if not request.leaving:
                request.deliver(Finished(event[2]))
            request.settle()
        elif kind == "error":
            if not request.leaving:
                request.deliver(RuntimeError(event[2]))
            request.settle()

    def _on_gone(self, worker: StepWorker) -> None:
        """The step loop ended; fail whatever it still held."""
        with self._lock:
            worker.alive = False
            failed = [r for r in self._requests.values() if r.worker is worker]
            for request in failed:
                del self._requests[request.id]
        if not self._closed:
            log.error("the batching worker of %s stopped with %d requests",
                      self._device, len(failed))
        for request in failed:
            request.outcome = _left()
            if not request.leaving:
                request.deliver(WorkerGone("the batching worker stopped"))
            request.settle()

"""Continuous batching in a worker process, so ``step()`` never holds the server's GIL.

In openvino-genai 2026.4 the Python binding of ``ContinuousBatchingPipeline.step()``
keeps the GIL for the whole step (17-40 ms per decode step with SmolLM2 on 2 CPU
cores, up to ~740 ms for a prompt), which stalls the event loop while streams run.
:class:`ProcessBatchingGenerator` keeps the pipeline in a child process (``spawn``;
:mod:`~npu_proxy_openvino.batching_worker` is its whole program) and talks to it over
one ``multiprocessing`` pipe:

- requests go out as plain data (prompt + :class:`~npu_proxy_openvino.options.GenerationSpec`);
  the worker builds the ``GenerationConfig`` with the same mapping as in-process;
- a writer thread sends (the loop only appends to a queue, so a long prompt never
  blocks it on a full pipe); a reader thread receives detokenized pieces and outcomes
  and hands each to its request's asyncio queue with ``call_soon_threadsafe``;
- when the worker dies (crash, ``kill -9``) every request in flight ends with an error
  and the next request starts a new worker (compiling the model again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from .batching import RequestStream
from .batching_worker import serve
from .options import GenerationSpec
from .runner import Outcome
from .streaming import Finished, wait_uncancellable

log = logging.getLogger(__name__)

#: Seconds to wait for a worker to leave after ``shutdown`` before killing it.
SHUTDOWN_GRACE = 10.0


class WorkerGone(RuntimeError):
    """The batching worker process ended while a request was in flight."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker compiles: plain data, sent to the child as its arguments."""

    path: str
    device: str
    max_parallel: int
    kv_cache_gb: int
    properties: dict[str, Any]


@dataclass(eq=False)
class _Request:
    id: int
    prompt: str
    spec: GenerationSpec
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | Finished[Outcome] | BaseException] = field(
        default_factory=asyncio.Queue
    )
    done: asyncio.Event = field(default_factory=asyncio.Event)
    submitted: bool = False
    leaving: bool = False
    #: the worker that holds it (a request dies with its worker, not with a later one)
    worker: Any = None
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


class _Worker:
    """One child process, its pipe and the two threads that serve the pipe."""

    def __init__(self, spec: WorkerSpec, name: str,
                 on_message: Any, on_gone: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=serve, name=name, daemon=True,
            args=(child, spec.path, spec.device, spec.max_parallel, spec.kv_cache_gb,
                  spec.properties),
        )
        self.process.start()
        child.close()
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._name = name
        self._on_message = on_message
        self._on_gone = on_gone
        self.alive = True
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    def wait_ready(self) -> None:
        """Block until the worker has compiled the model; raise if it could not."""
        while not self.conn.poll(0.1):
            if not self.process.is_alive():
                self.stop()
                raise RuntimeError(f"the batching worker exited ({self.process.exitcode})")
        try:
            message = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.stop()
            raise RuntimeError("the batching worker exited while loading") from exc
        if message[0] != "ready":
            self.stop()
            raise RuntimeError(str(message[1]))
        self._reader = threading.Thread(target=self._read, name=f"{self._name}-reader",
                                        daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"{self._name}-writer",
                                        daemon=True)
        self._reader.start()
        self._writer.start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the worker is gone; the reader reports it
                return

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            for event in message:
                self._on_message(event)
        self._on_gone(self)

    def stop(self) -> None:
        """Ask the worker to leave, wait for it (kill it if it will not), release all."""
        self.alive = False
        self._outbox.put(("shutdown",))
        self._outbox.put(None)
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join()
        elif self._writer is None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("shutdown",))
        self.process.join(SHUTDOWN_GRACE)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()
        self.process.close()


class ProcessStream(RequestStream):
    """A request of :class:`ProcessBatchingGenerator`, sent to the worker on first read."""

    def __init__(self, owner: ProcessBatchingGenerator, request: _Request) -> None:
        super().__init__(request)
        self._owner = owner
        self._sent = request

    async def _begin(self) -> None:
        if not self._sent.submitted:
            await self._owner.submit(self._sent)

    async def _leave(self) -> None:
        request = self._sent
        if not request.submitted:
            request.outcome = _left()
            request.done.set()
            return
        self._owner.cancel(request)
        await wait_uncancellable(request.done)


class ProcessBatchingGenerator:
    """:class:`~npu_proxy_openvino.runner.TextGenerator` whose ``ContinuousBatchingPipeline``
    lives in a worker process.

    Build it with :meth:`start` (blocking: spawns the worker and waits until the model
    is compiled); :meth:`close` shuts the worker down and joins it.
    """

    def __init__(self, spec: WorkerSpec, *, name: str = "npu-proxy-batching") -> None:
        self._spec = spec
        self._name = name
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._worker: _Worker | None = None
        self._restart = asyncio.Lock()
        self._closed = False

    @classmethod
    def start(
        cls, spec: WorkerSpec, *, name: str = "npu-proxy-batching"
    ) -> ProcessBatchingGenerator:
        generator = cls(spec, name=name)
        generator._spawn()
        return generator

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id (None before the first start and after close)."""
        worker = self._worker
        return worker.process.pid if worker is not None and worker.alive else None

    @property
    def active(self) -> int:
        """Requests the worker holds now (submitted and not yet freed)."""
        with self._lock:
            return len(self._requests)

    def configure(self, spec: GenerationSpec) -> GenerationSpec:
        """The spec itself: the worker builds the ``GenerationConfig`` from it."""
        return spec

    def stream(self, prompt: str, config: Any) -> ProcessStream:
        """Queue a generation of ``prompt`` (``config`` is a :class:`GenerationSpec`)."""
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        if not isinstance(config, GenerationSpec):
            raise TypeError("a batching worker takes a GenerationSpec as its config")
        request = _Request(next(self._ids), prompt, config, asyncio.get_running_loop())
        return ProcessStream(self, request)

    async def submit(self, request: _Request) -> None:
        """Send ``request`` to the worker, starting a new one if the last one died."""
        async with self._restart:
            while True:
                if self._closed:
                    raise RuntimeError("the pipeline is closed")
                worker = self._worker
                if worker is None or not worker.alive:
                    log.warning("the batching worker of %s is gone; starting a new one",
                                self._spec.device)
                    await asyncio.to_thread(self._spawn)
                    continue
                with self._lock:  # the reader marks a dead worker under this lock
                    if worker.alive:
                        self._requests[request.id] = request
                        request.submitted = True
                        request.worker = worker
                        break
            worker.send(("add", request.id, request.prompt, request.spec))

    def cancel(self, request: _Request) -> None:
        """Have the worker cancel ``request``; its ``end`` settles it."""
        with self._lock:
            if request.leaving or request.id not in self._requests:
                return
            request.leaving = True
            worker = self._worker
        if worker is not None:
            worker.send(("cancel", request.id))

    def close(self) -> None:
        """Cancel what is left, shut the worker down and join it (blocking)."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    # --- worker threads -----------------------------------------------------------------

    def _spawn(self) -> None:
        worker = _Worker(self._spec, self._name, self._on_message, self._on_gone)
        worker.wait_ready()
        old, self._worker = self._worker, worker
        if old is not None:
            old.stop()

    def _on_message(self, message: tuple[Any, ...]) -> None:
        """Reader thread: hand one event to its request (cheap work only)."""
        kind, request_id = message[0], message[1]
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                return
            if kind != "text":
                del self._requests[request_id]
        if kind == "text":
            if not request.leaving:
                request.deliver(message[2])
        elif kind == "end":
            request.outcome = message[2]
            if not request.leaving:
                request.deliver(Finished(message[2]))
            request.settle()
        elif kind == "error":
            if not request.leaving:
                request.deliver(RuntimeError(message[2]))
            request.settle()

    def _on_gone(self, worker: _Worker) -> None:
        """Reader thread: the worker's pipe closed; fail whatever it still held."""
        with self._lock:
            worker.alive = False
            failed = [r for r in self._requests.values() if r.worker is worker]
            for request in failed:
                del self._requests[request.id]
        if not self._closed:
            log.error("the batching worker of %s stopped (exit code %s) with %d requests",
                      self._spec.device, worker.process.exitcode, len(failed))
        for request in failed:
            request.outcome = _left()
            if not request.leaving:
                request.deliver(WorkerGone("the batching worker stopped"))
            request.settle()

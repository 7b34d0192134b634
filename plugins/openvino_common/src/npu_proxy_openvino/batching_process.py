"""Placement ``"process"`` of continuous batching: the step loop in a worker process.

:func:`worker_process` starts a child process (``spawn``;
:func:`~npu_proxy_openvino.batching_worker.serve` is its whole program) that builds the
``ContinuousBatchingPipeline`` and runs the one step loop there, so ``step()`` never
holds the server's GIL. The server talks to it over one ``multiprocessing`` pipe:

- requests go out as plain data (prompt + :class:`~npu_proxy_openvino.options.GenerationSpec`);
- a writer thread sends (the loop only appends to a queue, so a long prompt never
  blocks it on a full pipe); a reader thread receives each step's events and hands
  them to the generator (:class:`~npu_proxy_openvino.batching.ContinuousBatchingGenerator`);
- when the worker dies (crash, ``kill -9``) the reader reports it gone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections.abc import Callable
from typing import Any

from .batching import EventHandler, Launcher, StepWorker
from .batching_worker import WorkerSpec, serve

#: Seconds to wait for a worker to leave after ``shutdown`` before killing it.
SHUTDOWN_GRACE = 10.0


def worker_process(spec: WorkerSpec, name: str = "npu-proxy-batching") -> Launcher:
    """Placement ``"process"``: build ``spec`` and step it in a worker process.

    ``spec.factory`` is called in the child, so it must be importable by name there
    (a module-level function such as the real factory).
    """

    def launch(on_event: EventHandler, on_gone: Callable[[StepWorker], None]) -> StepWorker:
        worker = _ProcessWorker(spec, name, on_event, on_gone)
        worker.wait_ready()
        return worker

    return launch


class _ProcessWorker:
    """One child process, its pipe and the two threads that serve the pipe."""

    def __init__(self, spec: WorkerSpec, name: str, on_event: EventHandler,
                 on_gone: Callable[[StepWorker], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, name=name, daemon=True,
                                       args=(child, spec))
        self.process.start()
        child.close()
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._name = name
        self._on_event = on_event
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

    @property
    def pid(self) -> int | None:
        return self.process.pid

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
                self._on_event(event)
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

"""The child side of :mod:`~npu_proxy_openvino.batching_process`: a process that owns
one ``ContinuousBatchingPipeline`` and steps it.

GenAI's ``step()`` holds the GIL for the whole step, so it runs here, in its own
interpreter, and the server's event loop never waits for it. :func:`serve` is the
process's whole life: compile, say ``ready``, then alternate between reading commands
from the pipe (blocking while nothing runs) and stepping.

Messages are tuples of plain data. In: ``("add", id, prompt, GenerationSpec)``,
``("cancel", id)``, ``("shutdown",)``. Out: ``("ready",)`` or ``("failed", message)``
once; then lists of events, one list per step (one pipe write per step, not per
token): ``("text", id, piece)`` (already detokenized, never a split character),
``("end", id, Outcome)`` when GenAI has freed the sequence (finished, cancelled or
ignored) and ``("error", id, message)`` for a request the device failed.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .batching import IncrementalDetokenizer, _outcome, scheduler_config
from .options import GenerationSpec, apply_options

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    """One admitted request's state inside the worker."""

    id: int
    handle: Any
    detokenizer: IncrementalDetokenizer
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: Any = None
    start_ns: int = field(default_factory=time.perf_counter_ns)
    first_ns: int = 0
    cancelled: bool = False


def serve(conn: Connection, path: str, device: str, max_parallel: int, kv_cache_gb: int,
          properties: dict[str, Any]) -> None:
    """Compile the pipeline, report ``ready`` (or ``failed``), then serve until shutdown
    or until the server's end of the pipe closes."""
    # The server owns this process's life: it sends "shutdown" as it stops, and a server
    # that is gone closes the pipe. A Ctrl-C in the terminal or a service manager's
    # SIGTERM reaches the whole process group at once; obeying it here would end the
    # streams before the server has stopped accepting and cancelled them in order.
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        import openvino_genai

        pipe = openvino_genai.ContinuousBatchingPipeline(
            path, scheduler_config(max_parallel, kv_cache_gb), device, properties
        )
    except Exception as exc:
        conn.send(("failed", str(exc)))
        return
    conn.send(("ready",))
    try:
        _Stepper(pipe, conn).run()
    except (EOFError, OSError):  # the server went away: nothing left to serve
        return


class _Stepper:
    def __init__(self, pipe: Any, conn: Connection) -> None:
        import openvino_genai

        self._pipe = pipe
        self._conn = conn
        self._tokenizer = pipe.get_tokenizer()
        self._running = openvino_genai.GenerationStatus.RUNNING
        self._ignored = openvino_genai.GenerationStatus.IGNORED
        self._active: dict[int, _Job] = {}
        self._events: list[tuple[Any, ...]] = []

    def run(self) -> None:
        while True:
            # Block while idle; between steps only take what has already arrived.
            wait: float | None = 0 if self._active else None
            while self._conn.poll(wait):
                if not self._command(self._conn.recv()):
                    return
                wait = 0
            if self._active:
                try:
                    self._pipe.step()
                except Exception as exc:  # the device failed: every request it held fails
                    self._fail_all(exc)
                else:
                    self._collect()
            if self._events:
                events, self._events = self._events, []
                self._conn.send(events)

    def _command(self, message: tuple[Any, ...]) -> bool:
        kind = message[0]
        if kind == "add":
            _, request_id, prompt, spec = message
            self._admit(request_id, prompt, spec)
        elif kind == "cancel":
            job = self._active.get(message[1])
            if job is not None and not job.cancelled:
                job.cancelled = True
                job.handle.cancel()  # GenAI frees the sequence at the end of the next step
        elif kind == "shutdown":
            for job in self._active.values():
                job.handle.cancel()
            return False
        return True

    def _admit(self, request_id: int, prompt: str, spec: GenerationSpec) -> None:
        try:
            config = apply_options(self._pipe.get_config(), spec.options,
                                   max_new_tokens=spec.max_new_tokens,
                                   structured_schema=spec.structured_schema)
            handle = self._pipe.add_request(request_id, prompt, config)
        except Exception as exc:
            self._events.append(("error", request_id, str(exc)))
            return
        self._active[request_id] = _Job(request_id, handle, IncrementalDetokenizer(self._tokenizer))

    def _collect(self) -> None:
        for job in list(self._active.values()):
            handle = job.handle
            if not job.cancelled:
                ids: list[int] = []
                while handle.can_read():
                    for output in handle.read().values():
                        ids.extend(output.generated_ids)
                        job.finish_reason = output.finish_reason
                if ids:
                    job.tokens += len(ids)
                    if not job.first_ns:
                        job.first_ns = time.perf_counter_ns()
                    self._emit(job, job.detokenizer.feed(ids))
            if handle.get_status() != self._running:
                del self._active[job.id]
                self._end(job)

    def _end(self, job: _Job) -> None:
        handle = job.handle
        if handle.get_status() == self._ignored and not job.cancelled:
            self._events.append(("error", job.id, "the KV cache is too small for this request"))
            return
        if not job.cancelled:
            self._emit(job, job.detokenizer.finish())
        self._events.append(("end", job.id, _outcome(job, handle)))

    def _emit(self, job: _Job, text: str) -> None:
        if text:
            job.text.append(text)
            self._events.append(("text", job.id, text))

    def _fail_all(self, exc: Exception) -> None:
        log.error("continuous batching step failed: %s", exc)
        failed, self._active = self._active, {}
        for job in failed.values():
            job.handle.cancel()
            self._events.append(("error", job.id, str(exc)))

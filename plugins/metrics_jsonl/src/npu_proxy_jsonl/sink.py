"""A metrics sink that appends one JSON object per event to a file, in emission order.

Each line is ``{"time": <ISO 8601 UTC>, "event": <snake_case type>, ...the event's fields}``;
tuples become arrays. ``handle`` only serialises and enqueues, on the event loop; a
writer thread does the file I/O, so a slow disk never stalls a request.

A failing disk never costs the server more than the queue: the queue is bounded (an
event that finds it full is dropped and counted), and a write that fails (``ENOSPC``,
``EIO``) is reported to the event bus (counted in ``/health``'s ``metrics_sinks``,
logged once), its lines dropped and counted, and events are dropped until
``retry_after`` seconds have passed; then writing is tried again.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from npu_proxy.engine.events import MetricEvent, MetricsSink

#: Lines the queue holds by default before events are dropped.
DEFAULT_QUEUE_SIZE = 10_000
#: Seconds after a failed write before writing is tried again, by default.
DEFAULT_RETRY_AFTER = 30.0


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_record(event: MetricEvent, now: datetime | None = None) -> dict[str, Any]:
    """The JSON object written for ``event`` (``now`` defaults to the current UTC time)."""
    when = now or datetime.now(UTC)
    return {
        "time": when.isoformat(timespec="microseconds"),
        "event": _snake(type(event).__name__),
        **asdict(event),
    }


class JsonlSink(MetricsSink):
    """Appends every event to ``path`` as a JSON line.

    The file is opened (created if missing) when the sink is made, so an unwritable
    path fails at startup rather than on the first request. :meth:`close` writes every
    line handed over before it and closes the file; events after it are dropped.
    ``queue_size`` bounds the lines waiting for the writer; ``retry_after`` is the
    pause after a failed write (see the module docstring).
    """

    name = "jsonl"

    def __init__(self, path: Path, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        self.path = path
        # Unbuffered: a failed write leaves no half-written buffer to be flushed later.
        self._file: BinaryIO = path.open("ab", buffering=0)
        self._lines: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._closed = False
        self.retry_after = retry_after
        #: monotonic time before which events are dropped (a write failed); 0: writing
        self._paused_until = 0.0
        #: a write stopped mid-line: the next write starts on a new line
        self._torn = False

    @property
    def queued(self) -> int:
        """Lines waiting for the writer (never more than the queue size)."""
        return self._lines.qsize()

    def handle(self, event: MetricEvent) -> None:
        if self._closed:
            return
        if self._paused_until and time.monotonic() < self._paused_until:
            self._drop(1)
            return
        line = json.dumps(event_record(event), separators=(",", ":")).encode()
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self._drop(1)
            return
        if self._writer is None:
            # Started on first use (on the loop's thread) so an app that is built but
            # never served leaves no thread behind.
            self._writer = threading.Thread(target=self._write, name="jsonl-sink", daemon=True)
            self._writer.start()

    def _drop(self, count: int) -> None:
        if self.bus is not None:
            self.bus.report_dropped(self, count)

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            batch: list[bytes] = []
            while line is not None:
                batch.append(line)
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._append(batch)
            if line is None:
                return

    def _append(self, batch: list[bytes]) -> None:
        """Write ``batch``; on failure report it, drop it and pause (never raises)."""
        data = (b"\n" if self._torn else b"") + b"\n".join(batch) + b"\n"
        written = 0
        try:
            while written < len(data):
                written += self._file.write(data[written:]) or 0
        except (OSError, ValueError) as exc:
            self._torn = self._torn or written > 0
            self._paused_until = time.monotonic() + self.retry_after
            self._drop(len(batch))
            if self.bus is not None:
                self.bus.report_failure(self, "writing", exc)
            return
        self._torn = False
        if self._paused_until:
            self._paused_until = 0.0
            if self.bus is not None:
                self.bus.report_recovered(self, "writing")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._lines.put(None)  # the writer drains the queue, so this never waits long
            self._writer.join()
        self._file.close()

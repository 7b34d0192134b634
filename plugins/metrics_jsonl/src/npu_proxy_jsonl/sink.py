"""A metrics sink that appends one JSON object per event to a file, in emission order.

Each line is ``{"time": <ISO 8601 UTC>, "event": <snake_case type>, ...the event's fields}``;
tuples become arrays. ``handle`` only serialises and enqueues, on the event loop; a
writer thread does the file I/O, so a slow disk never stalls a request.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from npu_proxy.engine.events import MetricEvent, MetricsSink


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
    """

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False

    def handle(self, event: MetricEvent) -> None:
        if self._closed:
            return
        self._lines.put(json.dumps(event_record(event), separators=(",", ":")))
        if self._writer is None:
            # Started on first use (on the loop's thread) so an app that is built but
            # never served leaves no thread behind.
            self._writer = threading.Thread(target=self._write, name="jsonl-sink", daemon=True)
            self._writer.start()

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            batch: list[str] = []
            while line is not None:
                batch.append(line)
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._file.write("\n".join(batch) + "\n")
                self._file.flush()
            if line is None:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._lines.put(None)
            self._writer.join()
        self._file.close()

"""What the model commands print: sizes, times, tables, a model's facts, pull progress.

Ollama's CLI is the model: decimal units, times in words, columns four spaces apart.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

#: Expiry dates this far out mean "kept loaded forever" (the server's sentinel is 2318).
_FOREVER_YEAR = 2200


def human_bytes(size: int | float) -> str:
    """Decimal units as Ollama prints them: ``512 B``, ``4.7 GB``, ``274 MB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds allowed); None if it cannot be read."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _span(seconds: float) -> str:
    """A duration in words: ``2 minutes``, ``About an hour``, ``3 days``."""
    for limit, size, one, many in (
        (60, 1, "1 second", "seconds"),
        (3600, 60, "About a minute", "minutes"),
        (86400, 3600, "About an hour", "hours"),
        (86400 * 14, 86400, "1 day", "days"),
        (86400 * 60, 86400 * 7, "1 week", "weeks"),
        (86400 * 730, 86400 * 30, "1 month", "months"),
        (float("inf"), 86400 * 365, "1 year", "years"),
    ):
        if seconds < limit:
            count = int(seconds // size)
            return one if count <= 1 else f"{count} {many}"
    raise AssertionError("unreachable")


def human_ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "unknown"
    seconds = (now - moment).total_seconds()
    return "Less than a second ago" if seconds < 1 else f"{_span(seconds)} ago"


def human_until(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    if moment.year >= _FOREVER_YEAR:
        return "Forever"
    seconds = (moment - now).total_seconds()
    return "Stopping..." if seconds < 1 else f"{_span(seconds)} from now"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by at least four spaces, like ``ollama list``."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "    ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# --- pull progress ---------------------------------------------------------------------


class PullDisplay:
    """Shows pull progress: on a terminal one redrawn bar per file with speed and ETA;
    otherwise one line per file and phase, so logs and pipes are not flooded."""

    def __init__(
        self,
        out: TextIO,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        self._status = ""
        self._drawn = False  # a bar line is open (no newline yet)
        self._start: tuple[float, int] = (0.0, 0)
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "█▕▏".encode(encoding)
            self._full, self._edges = "█", ("▕", "▏")
        except (UnicodeEncodeError, LookupError):
            self._full, self._edges = "#", ("[", "]")

    def update(self, message: dict[str, Any]) -> None:
        status = str(message.get("status", ""))
        total = message.get("total")
        completed = int(message.get("completed") or 0)
        if message.get("digest") and isinstance(total, int) and total > 0:
            self._file(status, total, completed)
            return
        if status != self._status:
            self._end_line()
            self._write(status + "\n")
            self._status = status

    def close(self) -> None:
        self._end_line()

    def _file(self, status: str, total: int, completed: int) -> None:
        now = self.clock()
        if status != self._status:
            self._end_line()
            self._status = status
            self._start = (now, completed)
            if not self.tty:
                self._write(f"{status} ({human_bytes(total)})\n")
        if self.tty:
            self._write("\r" + self.bar_line(status, total, completed, now) + "\x1b[K")
            self._drawn = True

    def bar_line(self, status: str, total: int, completed: int, now: float) -> str:
        """``pulling 1a2b3c4d5e6f  45% ▕████    ▏ 120 MB/265 MB  12 MB/s  12s``."""
        started, base = self._start
        elapsed = now - started
        speed = (completed - base) / elapsed if elapsed > 0 else 0.0
        rate = f"{human_bytes(speed)}/s" if speed > 0 else ""
        if completed >= total:
            eta = ""
        elif speed > 0:
            eta = _clock((total - completed) / speed)
        else:
            eta = "?"
        percent = f"{100 * completed // total:3d}%"
        amounts = f"{human_bytes(completed)}/{human_bytes(total)}"
        tail = "  ".join(p for p in (amounts, rate, eta) if p)
        room = self.width - len(status) - len(percent) - len(tail) - 8
        cells = max(10, min(room, 50))
        filled = cells * completed // total
        bar = self._edges[0] + self._full * filled + " " * (cells - filled) + self._edges[1]
        return f"{status} {percent} {bar} {tail}"

    def _end_line(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def _clock(seconds: float) -> str:
    """``42s``, ``3m12s``, ``1h05m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

def _section(title: str, rows: Sequence[tuple[str, str]] | Sequence[str]) -> list[str]:
    lines = [f"  {title}"]
    for row in rows:
        if isinstance(row, tuple):
            lines.append(f"    {row[0]:<20}{row[1]}")
        else:
            lines.append(f"    {row}")
    return [*lines, ""]


def describe_model(shown: dict[str, Any]) -> str:
    """``npu-proxy show``'s text: model facts, capabilities, parameters, license."""
    details = shown.get("details") or {}
    info = shown.get("model_info") or {}
    arch = str(info.get("general.architecture") or details.get("family") or "")
    facts = [
        ("architecture", arch),
        ("parameters", str(details.get("parameter_size") or "")),
        ("context length", str(info.get(f"{arch}.context_length") or "")),
        ("embedding length", str(info.get(f"{arch}.embedding_length") or "")),
        ("quantization", str(details.get("quantization_level") or "")),
        ("format", str(details.get("format") or "")),
    ]
    lines = ["", *_section("Model", [(k, v) for k, v in facts if v])]
    if shown.get("capabilities"):
        lines += _section("Capabilities", [str(c) for c in shown["capabilities"]])
    parameters = str(shown.get("parameters") or "").strip()
    if parameters:
        lines += _section("Parameters", parameters.splitlines())
    license_text = str(shown.get("license") or "").strip()
    if license_text:
        lines += _section("License", license_text.splitlines()[:2])
    return "\n".join(lines)

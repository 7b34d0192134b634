"""What one request measured, and the summary of several.

Times are ``time.perf_counter()`` seconds taken by the caller, so a device and a server
are timed the same way: from sending the request to the first text piece and to the
end of the stream. Token counts are what the device or the server reported; a count it
did not report stays ``None`` and every rate that needs it is left out (never guessed).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One streamed generation as the caller saw it.

    ``first`` is when the first text arrived (None: no text at all).
    ``cached_tokens`` is the prompt tokens served from a prefix cache, when reported.
    """

    sent: float
    first: float | None
    end: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None = None

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first text."""
        return None if self.first is None else self.first - self.sent

    @property
    def prefill_rate(self) -> float | None:
        """Prompt tokens per second of time to first text (what a user waits for)."""
        ttft = self.ttft
        if not self.prompt_tokens or not ttft or ttft <= 0:
            return None
        return self.prompt_tokens / ttft

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first text: (completion - 1) / (end - first)."""
        if self.first is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        span = self.end - self.first
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests sent together (``--parallel``): their samples and the batch's wall time."""

    samples: tuple[Sample, ...]

    @property
    def wall(self) -> float:
        return max(s.end for s in self.samples) - min(s.sent for s in self.samples)

    @property
    def total_rate(self) -> float | None:
        """Generated tokens of every stream per second of the whole batch."""
        counts = [s.completion_tokens for s in self.samples]
        if any(c is None for c in counts) or self.wall <= 0:
            return None
        return sum(c or 0 for c in counts) / self.wall


@dataclass(frozen=True, slots=True)
class EmbedSample:
    """One embeddings request: ``texts`` embedded between ``sent`` and ``end``."""

    sent: float
    end: float
    texts: int
    prompt_tokens: int | None

    @property
    def rate(self) -> float | None:
        span = self.end - self.sent
        return self.texts / span if span > 0 else None


@dataclass(frozen=True, slots=True)
class Stat:
    """Median, minimum and maximum of ``n`` values."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        """The summary of the values that were measured (None when there are none)."""
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present), len(present))

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}

    def format(self, digits: int) -> str:
        """``median (min-max)``; just the median for a single value."""
        median = f"{self.median:.{digits}f}"
        if self.n == 1:
            return median
        return f"{median} ({self.low:.{digits}f}-{self.high:.{digits}f})"

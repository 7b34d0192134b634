"""A circuit breaker for one remote engine: failures open it, a good probe closes it.

Closed: requests flow; each failed request (refused connection, 5xx, timeout, a stream
cut off) counts, each good one resets the count, and ``threshold`` failures in a row
open it. A failed probe opens it at once (a probe is a deliberate check). Open: the
router does not choose the engine; probes run after ``base`` seconds, doubling after
each failed one up to ``12 * base``; the first probe that answers closes it again.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass
class Circuit:
    """The state machine; ``reason`` says why it opened (safe to show: no secrets)."""

    threshold: int
    base: float
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    reason: str = ""
    backoff: float = 0.0
    opened_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    def success(self) -> bool:
        """Record a success; True when this closed the circuit."""
        changed = self.state is CircuitState.OPEN
        self.state, self.failures, self.reason = CircuitState.CLOSED, 0, ""
        self.backoff, self.opened_at = 0.0, None
        return changed

    def failure(self, reason: str, *, probe: bool = False) -> bool:
        """Record a failure; True when this opened the circuit."""
        self.failures += 1
        self.reason = reason
        if self.state is CircuitState.OPEN:
            self.backoff = min(self.backoff * 2, self.base * 12)
            return False
        if probe or self.failures >= self.threshold:
            self.state, self.backoff = CircuitState.OPEN, self.base
            self.opened_at = time.monotonic()
            return True
        return False

    def describe(self) -> str:
        """Why the engine is down, for ``/health/devices``."""
        return (f"circuit open after {self.failures} failure(s): {self.reason}; "
                f"next probe within {self.backoff:g} s")

"""Stored responses, so a conversation can continue by ``previous_response_id``.

A bounded in-memory store, one per app: at most ``max_entries`` responses (the oldest
goes first) and none older than ``max_age`` seconds. Nothing survives a restart; a
client that needs that keeps its own history and sends it as ``input`` (as Codex CLI
does with ``store: false``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npu_proxy.engine.types import Message


@dataclass(frozen=True)
class StoredResponse:
    """A finished response: the body ``GET /v1/responses/{id}`` returns, and the
    conversation a follow-up continues (every input and output message, without the
    ``instructions``, which a follow-up states again, as OpenAI's API has it)."""

    body: dict[str, Any]
    conversation: tuple[Message, ...]


class ResponseStore:
    """Responses by id, bounded by count and age.

    :param max_entries: responses kept; 0 turns the store off (:attr:`enabled`).
    :param max_age: seconds a response is kept after it was stored.
    :param clock: the time source (monotonic seconds).
    """

    def __init__(
        self, max_entries: int, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response_id: str, entry: StoredResponse) -> None:
        """Keep ``entry``; the oldest entries go when the store is full. A no-op when off."""
        if not self.enabled:
            return
        self._expire()
        self._entries[response_id] = (self._clock(), entry)
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The entry stored under ``response_id``, or None if unknown or expired."""
        self._expire()
        found = self._entries.get(response_id)
        return found[1] if found else None

    def delete(self, response_id: str) -> bool:
        """Forget ``response_id``; False if it was not there."""
        self._expire()
        return self._entries.pop(response_id, None) is not None

    def _expire(self) -> None:
        # Entries are in insertion order, so the expired ones are at the front.
        cutoff = self._clock() - self.max_age
        while self._entries:
            stored_at, _ = next(iter(self._entries.values()))
            if stored_at > cutoff:
                break
            self._entries.popitem(last=False)

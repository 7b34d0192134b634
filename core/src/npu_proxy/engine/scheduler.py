"""Per-device admission: a bounded FIFO queue in front of a fixed number of slots.

A request first reserves a place (:meth:`DeviceQueue.reserve`, which fails at once with
:class:`BusyError` when the queue is full), then waits for a slot in FIFO order. A waiter
that is cancelled (its client went away) leaves the queue and never reaches the device;
a slot released while nobody waits is simply free.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from .errors import BusyError


class Ticket:
    """A reserved place in a :class:`DeviceQueue`. Await :meth:`acquire`, then :meth:`release`.

    Releasing a ticket that never got its slot just gives up its place in the queue.
    """

    def __init__(self, queue: DeviceQueue) -> None:
        self._queue = queue
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done = False

    async def acquire(self) -> None:
        """Wait for a slot. Cancellation removes the ticket from the queue."""
        try:
            await self._future
        except asyncio.CancelledError:
            self.release()
            raise

    def release(self) -> None:
        """Free the slot (or the queue place). Idempotent."""
        if self._done:
            return
        self._done = True
        self._queue._release(self)


class DeviceQueue:
    """FIFO admission for one device: ``slots`` at once, at most ``limit`` waiting."""

    def __init__(
        self,
        device: str,
        slots: int,
        limit: int,
        on_change: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.device = device
        self.slots = max(1, slots)
        self.limit = limit
        self.in_flight = 0
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        """True when a new request would be refused."""
        return self.in_flight >= self.slots and len(self._waiting) >= self.limit

    def reserve(self) -> Ticket:
        """Take a place; the ticket holds a slot at once when one is free and nobody waits.

        Raises :class:`BusyError` when every slot is busy and the queue is full.
        """
        if self.full:
            raise BusyError(
                f"the {self.device} queue is full ({self.limit} waiting); try again shortly",
                retry_after=self._retry_after(),
            )
        ticket = Ticket(self)
        if self.in_flight < self.slots and not self._waiting:
            self.in_flight += 1
            ticket._future.set_result(None)
        else:
            self._waiting.append(ticket)
        self._changed()
        return ticket

    def _retry_after(self) -> int:
        # One second per queued request per slot is a rough but honest order of magnitude.
        return max(1, min(60, len(self._waiting) // self.slots))

    def _release(self, ticket: Ticket) -> None:
        if ticket._future.done() and not ticket._future.cancelled():
            # It held (or was just handed) a slot: pass the slot on to the next live waiter.
            self.in_flight -= 1
            self._hand_on()
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
            if not ticket._future.done():
                ticket._future.cancel()
        self._changed()

    def _hand_on(self) -> None:
        while self._waiting and self.in_flight < self.slots:
            nxt = self._waiting.popleft()
            if nxt._future.done():  # cancelled while waiting
                continue
            self.in_flight += 1
            nxt._future.set_result(None)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.device, len(self._waiting), self.in_flight)

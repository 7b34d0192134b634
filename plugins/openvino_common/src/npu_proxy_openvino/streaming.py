"""The bridge from GenAI's blocking, callback-driven ``generate`` into asyncio.

GenAI calls the streamer on its own thread for every decoded piece. Each piece is
handed to the event loop with ``call_soon_threadsafe`` (no polling, no lock on the
loop). The callback's return value is how cancellation reaches GenAI: once the
consumer goes away the next call returns "stop", so generation ends at the next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: ``on_piece(text) -> keep_going``: what a blocking runner calls for each piece.
PieceCallback = Callable[[str], bool]


@dataclass(slots=True)
class Finished(Generic[T]):
    """The last item of :func:`stream_in_thread`: the runner's return value."""

    result: T


@dataclass(slots=True)
class _Failed:
    error: BaseException


async def stream_in_thread(
    run: Callable[[PieceCallback], T], *, name: str = "npu-proxy-generate"
) -> AsyncGenerator[str | Finished[T], None]:
    """Run ``run(on_piece)`` on a dedicated thread and yield its pieces, then its result.

    Contract:
    - pieces arrive in order, then exactly one :class:`Finished`; an exception raised
      by ``run`` is re-raised here instead;
    - when the consumer stops early (``aclose()``, task cancellation, an exception),
      ``on_piece`` returns ``False`` from then on, and this generator does not return
      until ``run`` has returned: the device is free when ``aclose()`` completes.

    A dedicated thread (not the default executor) keeps a long generation from
    starving ``asyncio.to_thread`` work such as tokenizer loads.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | Finished[T] | _Failed] = asyncio.Queue()
    stop = threading.Event()
    done = asyncio.Event()

    def deliver(item: str | Finished[T] | _Failed) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            # The loop is closed (interpreter shutting down): nobody is listening.
            stop.set()

    def on_piece(text: str) -> bool:
        if not stop.is_set():
            deliver(text)
        return not stop.is_set()

    def target() -> None:
        try:
            item: Finished[T] | _Failed = Finished(run(on_piece))
        except BaseException as exc:  # handed to the consumer, who re-raises it
            item = _Failed(exc)
        deliver(item)
        try:
            loop.call_soon_threadsafe(done.set)
        except RuntimeError:
            return

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if isinstance(item, Finished):
                return
    finally:
        stop.set()
        await wait_uncancellable(done)


async def wait_uncancellable(event: asyncio.Event) -> None:
    """Wait for ``event`` even if this task is cancelled meanwhile; re-raise afterwards.

    Freeing the device takes at most one more token, so the wait is short, and
    returning earlier would let the engine start the next generation on a busy pipeline.
    """
    cancelled = False
    while not event.is_set():
        try:
            await asyncio.shield(event.wait())
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError

"""The SSE stream of one generation: ``event: <type>\\ndata: {...}\\n\\n`` per event.

Contract of :func:`message_stream`: it owns the :class:`Generation` and always closes
it, so the device slot is freed however the stream ends (finished, failed, or the
client gone: the response cancels the iterator, and the cancellation reaches the
generation). A ``ping`` follows ``message_start`` and repeats after every
``ping_interval`` seconds without an event, as on the real API, so clients and proxies
keep the connection open through a long prefill. Errors after the first byte end the
stream with an ``error`` event (the status is already 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from npu_proxy.engine.engine import Generation
from npu_proxy.engine.errors import EngineError
from npu_proxy.engine.types import GenerationEvent
from starlette.responses import StreamingResponse
from starlette.types import Send

from .encoder import MessageEncoder
from .errors import error_body, wire_status

log = logging.getLogger(__name__)

PING: dict[str, Any] = {"type": "ping"}


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event named after its ``type``."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator.

    Starlette stops iterating when the client leaves but leaves an async generator
    suspended if the cancellation lands outside it (in ``send``); closing it here
    makes the generator's ``finally`` run at once instead of at garbage collection.
    """

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                await closer()


async def message_stream(
    generation: Generation, encoder: MessageEncoder, ping_interval: float
) -> AsyncIterator[bytes]:
    """The SSE bytes of ``generation`` (see the module docstring for the contract)."""
    async with generation:
        events = generation.__aiter__()
        pending: asyncio.Task[GenerationEvent] | None = None
        try:
            for opening in encoder.start():
                yield sse(opening)
            yield sse(PING)
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(events))
                # wait() (not wait_for) so a ping never cancels the token being made.
                done, _ = await asyncio.wait({pending}, timeout=ping_interval)
                if not done:
                    yield sse(PING)
                    continue
                step, pending = pending, None
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                except EngineError as exc:
                    status = wire_status(exc.status, exc.code)
                    yield sse(error_body(status, exc.message))
                    return
                for out in encoder.feed(event):
                    yield sse(out)
                if generation.done is not None:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception:
            log.exception("streaming a message failed")
            yield sse(error_body(500, "internal server error"))
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

"""Server-sent events as OpenAI sends them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

:class:`EventStreamResponse` guarantees the generation behind a stream is closed however
the response ends: finished, failed, or abandoned by a client that disconnected (then
Starlette cancels the body while it waits for the next token, or the body was never
started at all). Closing the generation cancels it at the next token and frees its slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One ``data:`` event. ``ensure_ascii`` keeps every event plain ASCII on the wire."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that runs ``on_close`` when it ends, always."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        # Proxies must not buffer a token stream; clients must not cache it.
        merged = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        super().__init__(events, headers=merged)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: this must run even when the request task itself is cancelled.
            with anyio.CancelScope(shield=True):
                closer = getattr(self._events, "aclose", None)
                if closer is not None:
                    await closer()
                await self._on_close()

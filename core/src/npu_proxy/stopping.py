"""A stop past its grace period answers the requests it cuts, instead of logging them.

When the server stops, uvicorn waits ``timeout_graceful_shutdown`` seconds
(``NPU_PROXY_SHUTDOWN_GRACE``) for requests in progress, then cancels them. Cancelled,
an ASGI app raises ``CancelledError`` into uvicorn, which logs it as a traceback and
answers 500 or cuts the connection. :class:`StopGuard` catches it at the edge of the
app: a request not answered yet (waiting for a device, in prefill, a reply that is not
streamed) gets a 503 :class:`~npu_proxy.engine.errors.ServerStoppingError` in its
dialect's shape. A stream that has begun ends itself with its dialect's error event
(:class:`~npu_proxy.streaming.ClosingStreamResponse`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine.errors import EngineError, ServerStoppingError

log = logging.getLogger(__name__)


class StopGuard:
    """Pure ASGI middleware; ``render(path, error)`` is the error response for ``path``."""

    def __init__(self, app: ASGIApp, render: Callable[[str, EngineError], ASGIApp]) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # Only the server cancels a request from outside: it is stopping.
            if started:
                log.warning("the stop cut a response on %s short", scope.get("path", ""))
                return
            with anyio.CancelScope(shield=True):
                await self.render(scope.get("path", ""), ServerStoppingError())(
                    scope, receive, send)

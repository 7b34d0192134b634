"""Pure ASGI middleware (not BaseHTTPMiddleware, which hides client disconnects).

:class:`RequestContextMiddleware` gives every response an ``X-Request-ID`` of the form
``req_<24 hex>`` and reports each finished request to the metrics sinks, labelled by
its route template (never the raw path, so labels stay bounded).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine.events import EventBus, RequestCompleted


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, bus: EventBus) -> None:
        self.app = app
        self.bus = bus

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route: Any = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.bus.emit(
                RequestCompleted(
                    endpoint=endpoint,
                    method=scope.get("method", ""),
                    status=status,
                    duration=time.perf_counter() - started,
                )
            )

"""Listen first, compose second: ``/health`` answers while the server is still starting.

Composing the server (importing every plugin, FastAPI among them, and building the
engine) takes longer than binding a socket. :class:`StagedApp` is the ASGI app uvicorn
serves instead: its lifespan completes at once, so the socket is bound and ``/health``
answers as soon as uvicorn and the settings are imported; the composition then runs in
a thread. :class:`StagedServer` starts it only once the socket is bound (its imports
would otherwise hold the GIL while uvicorn binds). The composed app's own lifespan
(device probe, warm-up) then runs as it would have, driven from here.

Contract:

- ``/health`` before the composed app is ready: 200 with ``{"status": "starting"}``
  and the keys the composed server reports (no devices or models yet), behind the same
  client allow-list and Host check; like afterwards, it never needs the API key.
- Every other request waits for the composed app and then runs through it unchanged.
  Once it is ready, every request (``/health`` too) goes straight to it.
- If composition fails, ``error`` holds the one-line reason, waiting and later
  requests get a 503, and ``on_failure`` is called once (the CLI stops the server and
  exits non-zero with that reason).
- Shutdown waits for a composition in progress, then shuts the composed app down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .connections import harden
from .security import SecurityMiddleware, policy_options

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> ASGIApp:
    """A JSON response as a bare ASGI app (Starlette's would cost its import here)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    return respond


def _plain(path: str, status: int, message: str, code: str,
           headers: dict[str, str] | None) -> ASGIApp:
    """An error before any dialect is loaded: ``{"error": message}``."""
    return _json({"error": message}, status, headers)


class StagedApp:
    """Serves ``/health`` at once and everything else once ``compose()`` has returned."""

    def __init__(self, compose: Callable[[], ASGIApp], settings: Settings, *,
                 expected: tuple[type[Exception], ...] = (),
                 on_failure: Callable[[], None] | None = None,
                 begin_on_startup: bool = True) -> None:
        """``expected``: exceptions of ``compose`` that are configuration errors, reported
        by their message alone (anything else is logged with its traceback).
        ``begin_on_startup=False``: composition waits for :meth:`begin`."""
        self.error: str | None = None
        self._expected = (*expected, _LifespanFailed)
        self.on_failure = on_failure
        self._compose = compose
        self._settings = settings
        self._started = time.time()
        self._app: ASGIApp | None = None
        self._lifespan: _Lifespan | None = None
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._begin_on_startup = begin_on_startup
        self._early_health = SecurityMiddleware(self._health, render=_plain,
                                                **policy_options(settings))

    @property
    def settings(self) -> Settings:
        """The settings the server runs with."""
        return self._settings

    @property
    def ready(self) -> bool:
        """True once the composed app has started and serves every request."""
        return self._app is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
            return
        if self._app is None and self.error is None and scope["type"] == "http" \
                and scope["path"] == "/health":
            await self._early_health(scope, receive, send)
            return
        await self._settled.wait()
        if self._app is not None:
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await _plain(scope["path"], 503, f"the server failed to start: {self.error}",
                         "unavailable", None)(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1011})

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {
            "status": "starting",
            "version": __version__,
            "uptime_seconds": round(time.time() - self._started, 3),
            "real_inference": self._settings.real_inference,
            "routing": self._settings.routing,
            "devices": {},
            "models": [],
            "metrics_sinks": {},
        }
        await _json(body)(scope, receive, send)

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._begin_on_startup:
                    self.begin()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def begin(self) -> None:
        """Start composing (once), on the running loop; requests wait for it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            app = await asyncio.to_thread(self._compose)
            lifespan = _Lifespan(app)
            await lifespan.startup()
        except Exception as exc:
            text = str(exc).strip()
            self.error = text.splitlines()[-1] if text else type(exc).__name__
            if not isinstance(exc, self._expected):
                log.error("composing the server failed", exc_info=exc)
            self._settled.set()
            if self.on_failure is not None:
                self.on_failure()
            return
        self._lifespan = lifespan
        self._app = app
        self._settled.set()
        log.info("ready: plugins composed and started %.2f s after the server started",
                 time.time() - self._started)

    async def _stop(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task  # a composition in progress cannot be interrupted
        if self._lifespan is not None:
            await self._lifespan.shutdown()


class StagedServer(uvicorn.Server):
    """A uvicorn server that lets its :class:`StagedApp` begin composing once the
    socket is bound, serving with the connection guards of the app's settings
    (:func:`npu_proxy.connections.harden`: client allow-list at connection time,
    per-client connection limit, header and body timeouts, no forwarded headers)."""

    def __init__(self, config: uvicorn.Config, app: StagedApp) -> None:
        super().__init__(harden(config, app.settings))
        self._staged = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._staged.begin()


class _LifespanFailed(Exception):
    """The composed app's own startup failed; the message is its reason."""


class _Lifespan:
    """Drives an ASGI app's lifespan protocol from outside (startup, later shutdown)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope: dict[str, Any] = {"type": "lifespan", "state": {},
                                 "asgi": {"version": "3.0", "spec_version": "2.0"}}

        async def run() -> None:
            await self._app(scope, self._to_app.get, self._from_app.put)

        self._task = asyncio.get_running_loop().create_task(run())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply["type"] == "lifespan.startup.failed":
            message = str(reply.get("message") or "startup failed")
            log.error("the server's startup failed:\n%s", message)
            with contextlib.suppress(Exception):
                await self._task  # Starlette re-raises after reporting; collect it here
            raise _LifespanFailed(message)

    async def shutdown(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            reply = await self._reply()
        except _LifespanFailed as exc:
            log.error("the server's shutdown failed: %s", exc)
            return
        if reply["type"] == "lifespan.shutdown.failed":
            log.error("the server's shutdown failed:\n%s", reply.get("message"))
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _reply(self) -> Message:
        assert self._task is not None
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        failure = None if self._task.cancelled() else self._task.exception()
        raise _LifespanFailed(f"the app's lifespan ended early: {failure!r}")

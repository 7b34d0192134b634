"""Guards at the connection, before a request exists: who may connect, how many
connections one client may hold, and how long a request may take to arrive.

uvicorn times out idle kept-alive connections only; a client that sends its request
line, headers or body a byte at a time holds its connection (and a file descriptor)
for as long as it likes, and a client outside the allow-list is only refused once its
headers have arrived. :func:`guarded_protocol` returns uvicorn's h11 protocol with:

- the client allow-list checked when the connection is made: a refused address gets
  ``403 {"error": ...}`` and the connection is closed, nothing parsed;
- at most ``max_per_client`` open connections per client address: one more gets
  ``503`` with ``Retry-After`` and is closed at once;
- a header timeout: a request's whole head (request line and headers) must arrive
  within ``header_timeout`` seconds of the connection (or, on a kept-alive connection,
  of the request's first byte);
- a body timeout: a request body must keep arriving: ``body_timeout`` seconds from the
  end of the head, plus one second per :data:`BODY_MIN_RATE` bytes received (a real
  upload is never cut; a trickle is). Time in which the server itself is not reading
  (the app has not consumed the body yet) does not count.

A cut connection is closed (a slow head first gets ``408``). The ASGI-level checks in
:mod:`npu_proxy.security` still run for every request, for any other server too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import uvicorn

    from .settings import Settings

log = logging.getLogger(__name__)

#: Bytes per second a request body must keep up on average, beyond ``body_timeout``.
BODY_MIN_RATE = 1024
#: Seconds a refused connection is kept half-open so the client reads the refusal
#: (closing with its request unread would reset the connection instead).
_LINGER = 2.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ConnectionPolicy:
    """The limits of one server, and its count of open connections per client."""

    clients: list[Network]
    header_timeout: float
    body_timeout: float
    max_per_client: int
    open: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionPolicy:
        from .security import allowed_networks

        return cls(allowed_networks(settings), settings.header_timeout,
                   settings.body_timeout, settings.max_client_connections)

    def allows(self, host: str) -> bool:
        if not self.clients:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True  # not an IP socket (a Unix socket): nothing to check
        return any(address in network for network in self.clients)


def guarded_protocol(policy: ConnectionPolicy) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol bound to ``policy`` (one class per server: no global state)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"policy": policy})


def harden(config: uvicorn.Config, settings: Settings) -> uvicorn.Config:
    """``config`` serving with the connection guards of ``settings``.

    Also: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are ignored (uvicorn trusts them
    from loopback by default, which let any local process choose the address the
    allow-list checks), and WebSocket upgrades are not served (no route uses them).
    """
    config.http = guarded_protocol(ConnectionPolicy.from_settings(settings))
    config.proxy_headers = False
    config.ws = "none"
    return config


def _raw_response(status: int, reason: str, message: str,
                  headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with the guards of :data:`policy` (see the module doc)."""

    policy: ConnectionPolicy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer: str | None = None  # counted in policy.open while set
        self._refused = False
        self._phase: str | None = None  # "head" or "body" while a timer runs
        self._phase_start = 0.0
        self._phase_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        refusal = None
        if host is not None and not self.policy.allows(host):
            refusal = _raw_response(
                403, "Forbidden", "client address not allowed (NPU_PROXY_ALLOWED_CLIENTS)")
        elif host is not None and self.policy.open[host] >= self.policy.max_per_client:
            refusal = _raw_response(
                503, "Service Unavailable", "too many connections from this client "
                "(NPU_PROXY_MAX_CLIENT_CONNECTIONS)", {"retry-after": "1"})
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        if host is not None:
            self._peer = host
            self.policy.open[host] += 1
        super().connection_made(transport)
        self._enter("head")

    def _refuse(self, transport: asyncio.Transport, response: bytes) -> None:
        self._refused = True
        self.transport = transport
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()  # then read (and drop) what the client sent, briefly
            self._timer = self.loop.call_later(_LINGER, transport.close)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._phase == "body":
            self._phase_bytes += len(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._refused:
            return
        if self._peer is not None:
            self.policy.open[self._peer] -= 1
            if self.policy.open[self._peer] <= 0:
                del self.policy.open[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Follow the client's side of the exchange: head, body, or nothing pending."""
        state = self.conn.their_state
        if state is h11.IDLE:
            # Waiting for a request: its first byte starts the head timer (the idle
            # time before it is uvicorn's keep-alive timeout).
            phase = "head" if self.conn.trailing_data[0] or self._phase == "head" else None
        elif state is h11.SEND_BODY:
            phase = "body"
        else:
            phase = None
        if phase != self._phase:
            self._enter(phase)

    def _enter(self, phase: str | None) -> None:
        self._cancel()
        self._phase = phase
        self._phase_start = self.loop.time()
        self._phase_bytes = 0
        if phase is not None:
            self._timer = self.loop.call_at(self._deadline(), self._check)

    def _deadline(self) -> float:
        if self._phase == "head":
            return self._phase_start + self.policy.header_timeout
        return (self._phase_start + self.policy.body_timeout
                + self._phase_bytes / BODY_MIN_RATE)

    def _check(self) -> None:
        self._timer = None
        if self._phase == "body" and self.flow is not None and self.flow.read_paused:
            self._enter("body")  # the server is not reading: the client is not late
            return
        deadline = self._deadline()
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check)
            return
        log.debug("closing a connection from %s: request %s too slow", self._peer, self._phase)
        if self._phase == "head" and self.conn.our_state is h11.IDLE:
            self.transport.write(_raw_response(
                408, "Request Timeout", "request headers took too long "
                "(NPU_PROXY_HEADER_TIMEOUT)"))
        self._phase = None
        self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

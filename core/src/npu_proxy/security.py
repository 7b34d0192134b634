"""Network safety as pure ASGI middleware: client allow-list, Host check, Origin check,
body limit, API key.

The server binds ``0.0.0.0`` by default so WSL2 can reach it; these checks keep that
safe. Each refusal is rendered by the dialect that owns the path (its own 401/403/413
shape), through the ``render`` callback. Order, outermost first: client address,
Host header, Origin (cross-site requests), then CORS (preflights), body size
(buffered, so 413 comes before any parsing), API key. Every scope but the lifespan
goes through the first three (``OPTIONS`` and WebSocket handshakes included); a
refused WebSocket handshake is closed (the server answers it with 403).
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

Render = Callable[[str, int, str, str, dict[str, str] | None], ASGIApp]
"""(path, status, message, code, headers) -> a response (an ASGI app) in the owning
dialect's shape."""

#: Loopback, private ranges (the WSL2 virtual network is one) and link-local.
DEFAULT_CLIENTS = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "169.254.0.0/16", "fe80::/10", "fc00::/7",
)
#: Paths that never need the API key.
OPEN_PATHS = frozenset({"/health"})
#: Paths any web page may call (a health probe changes nothing and reveals little).
_CROSS_SITE_PREFIX = "/health"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR strings (or single addresses) as networks; ``ValueError`` names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR range: {value!r}") from None
    return networks


@lru_cache(maxsize=1)
def machine_names() -> frozenset[str]:
    """This machine's own host names (lower case), for the Host-header check."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return frozenset(names)


def host_of(header: str) -> str:
    """The host part of a Host header: ``[::1]:80`` -> ``::1``, ``a.b:8080`` -> ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


class HostPolicy:
    """Which Host headers are accepted: against DNS rebinding, bound anywhere.

    Accepted: loopback names and ``*.localhost``, IP literals in the allowed client
    ranges, this machine's names, and any pattern in ``extra`` (``*`` wildcards;
    ``*`` alone accepts every host).
    """

    def __init__(self, extra: Iterable[str], networks: list) -> None:  # type: ignore[type-arg]
        self.patterns = [p.strip().lower() for p in extra if p.strip()]
        self.networks = networks

    def allows(self, header: str | None) -> bool:
        if not header:
            return True  # HTTP/1.0 clients send none; nothing to rebind
        host = host_of(header)
        if host in machine_names() or host.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(fnmatch.fnmatchcase(host, p) for p in self.patterns)
        return (
            address.is_loopback
            or any(address in n for n in self.networks)
            or any(fnmatch.fnmatchcase(host, p) for p in self.patterns)
        )


def origins_regex(patterns: Iterable[str]) -> str:
    """One regex for origin patterns with ``*`` wildcards.

    A ``*`` that is a whole port (``http://localhost:*``) matches digits only; any other
    ``*`` matches within a host (no ``/``, ``@``, ``?``, ``#`` or space), so a pattern
    never admits user info (``http://localhost:@evil.example``) or a path.
    """
    parts = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        port_wildcard = pattern.endswith(":*")
        body = pattern[:-2] if port_wildcard else pattern
        regex = re.escape(body).replace(r"\*", r"[^\s/@?#]*")
        parts.append(regex + (r":[0-9]{1,5}" if port_wildcard else ""))
    return "^(?:" + "|".join(parts) + ")$" if parts else "^$"


def api_key_of(headers: dict[bytes, bytes]) -> str | None:
    """The key a client sent: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    direct = headers.get(b"x-api-key")
    if direct:
        return direct.decode("latin-1").strip()
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class SecurityMiddleware:
    """Refuses what a trusted local server must refuse, before the app sees it.

    ``cors`` wraps the inner checks (body limit, API key) and the app: preflights are
    answered by it, after the client, Host and Origin checks and before the API key
    (a browser sends no credentials in a preflight).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        render: Render,
        uploads: tuple[str, ...] = (),
        api_key: str | None,
        clients: list,  # type: ignore[type-arg]
        hosts: HostPolicy,
        origins: str,
        max_body: int,
        cors: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.render = render
        self.uploads = tuple(p.rstrip("/") + "/" for p in uploads)
        self.api_key = api_key.encode() if api_key else None
        self.clients = clients
        self.hosts = hosts
        self.origins = re.compile(origins)
        self.max_body = max_body
        self._inner: ASGIApp = cors(self._gate) if cors is not None else self._gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        refusal = self._check_peer(scope, headers)
        if refusal is None and scope["type"] == "websocket":
            refusal = self._check_key(headers)
        if refusal is not None:
            await self._refuse(scope, receive, send, refusal)
            return
        await self._inner(scope, receive, send)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Body limit and API key (HTTP), then the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if scope["method"] in _BODY_METHODS and not scope["path"].startswith(self.uploads):
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                await self._too_large(scope, receive, send)
                return
            buffered = await self._read_body(receive)
            if buffered is None:
                await self._too_large(scope, receive, send)
                return
            receive = _replay(buffered, receive)
        if scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            refusal = self._check_key(headers)
            if refusal is not None:
                await self._refuse(scope, receive, send, refusal)
                return
        await self.app(scope, receive, send)

    def _check_key(
        self, headers: dict[bytes, bytes]
    ) -> tuple[int, str, str, dict[str, str] | None] | None:
        if self.api_key is None:
            return None
        sent = api_key_of(headers)
        if sent is not None and hmac.compare_digest(sent.encode(), self.api_key):
            return None
        message = "missing API key" if sent is None else "invalid API key"
        hint = "send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
        return 401, f"{message}: {hint}", "unauthorized", {"WWW-Authenticate": "Bearer"}

    def _check_peer(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[int, str, str, dict[str, str] | None] | None:
        client = scope.get("client")
        if client and self.clients:
            try:
                address = ipaddress.ip_address(client[0])
            except ValueError:
                address = None
            if address is not None and not any(address in n for n in self.clients):
                return (403, "client address not allowed (NPU_PROXY_ALLOWED_CLIENTS)",
                        "forbidden", None)
        host = headers.get(b"host")
        if not self.hosts.allows(host.decode("latin-1") if host else None):
            return 403, "Host header not allowed (NPU_PROXY_ALLOWED_HOSTS)", "forbidden", None
        origin = headers.get(b"origin")
        # A browser names the page that makes a request; a page on another site must
        # not act here (a "simple" text/plain POST needs no preflight). Clients that
        # are not browsers send no Origin and are not concerned.
        if origin is not None and not _health(scope["path"]) \
                and not self._same_origin(origin, host) \
                and not self.origins.match(origin.decode("latin-1")):
            return 403, "cross-origin request refused (NPU_PROXY_ORIGINS)", "forbidden", None
        return None

    @staticmethod
    def _same_origin(origin: bytes, host: bytes | None) -> bool:
        """A page this server served itself (``/docs`` opened by a LAN address): its
        origin is the Host it called, which the Host check has already accepted."""
        if not host:
            return False
        scheme, _, rest = origin.partition(b"://")
        return scheme in (b"http", b"https") and rest.lower() == host.strip().lower()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      refusal: tuple[int, str, str, dict[str, str] | None]) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.render(scope["path"], *refusal)(scope, receive, send)

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """Every body message, or None as soon as the total passes the limit."""
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.max_body:
                return None
            if not message.get("more_body", False):
                return messages

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = f"{self.max_body / 1048576:g} MiB" if self.max_body >= 1048576 else (
            f"{self.max_body} bytes")
        response = self.render(
            scope["path"], 413, f"request body is larger than {limit} (NPU_PROXY_MAX_BODY)",
            "too_large", {"Connection": "close"},
        )
        await response(scope, receive, send)


def _health(path: str) -> bool:
    return path == _CROSS_SITE_PREFIX or path.startswith(_CROSS_SITE_PREFIX + "/")


def allowed_networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The client allow-list as networks; empty when every address is allowed (``*``)."""
    if settings.allowed_clients == ["*"]:
        return []
    return parse_networks(settings.allowed_clients)


def policy_options(settings: Settings) -> dict[str, Any]:
    """:class:`SecurityMiddleware`'s keyword arguments (all but ``render`` and ``cors``)
    from settings."""
    clients = allowed_networks(settings)
    return {
        "api_key": settings.api_key.get_secret_value() if settings.api_key else None,
        "clients": clients,
        "hosts": HostPolicy(settings.allowed_hosts, clients or parse_networks(DEFAULT_CLIENTS)),
        "origins": origins_regex(settings.origins),
        "max_body": settings.max_body,
    }


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns the buffered body first, then the live channel (disconnects)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def exposure_warning(settings: Settings) -> str | None:
    """The one warning for a server reachable beyond this machine without an API key."""
    if settings.api_key is not None or is_loopback(settings.host):
        return None
    return (
        f"listening on {settings.host}:{settings.port} without an API key: anyone who can "
        "reach this port (allowed clients: " + ", ".join(settings.allowed_clients) + ") "
        "can run models, read the model list and pull models. Set NPU_PROXY_API_KEY to "
        "require 'Authorization: Bearer KEY', or bind to 127.0.0.1 with NPU_PROXY_HOST."
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or ``localhost``) reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

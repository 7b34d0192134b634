"""Network safety as pure ASGI middleware: client allow-list, Host check, body limit, API key.

The server binds ``0.0.0.0`` by default so WSL2 can reach it; these checks keep that
safe. Each refusal is rendered by the dialect that owns the path (its own 401/403/413
shape), through the ``render`` callback. Order, outermost first: client address,
Host header, body size (buffered, so 413 comes before any parsing), API key.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
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
    """Refuses what a trusted local server must refuse, before the app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        render: Render,
        uploads: tuple[str, ...] = (),
        api_key: str | None,
        clients: list,  # type: ignore[type-arg]
        hosts: HostPolicy,
        max_body: int,
    ) -> None:
        self.app = app
        self.render = render
        self.uploads = tuple(p.rstrip("/") + "/" for p in uploads)
        self.api_key = api_key.encode() if api_key else None
        self.clients = clients
        self.hosts = hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = dict(scope.get("headers", []))
        refusal = self._check_peer(scope, headers)
        if refusal is not None:
            await self.render(path, *refusal, None)(scope, receive, send)
            return
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
        if self.api_key is not None and path not in OPEN_PATHS and scope["method"] != "OPTIONS":
            sent = api_key_of(headers)
            if sent is None or not hmac.compare_digest(sent.encode(), self.api_key):
                message = "missing API key" if sent is None else "invalid API key"
                hint = "send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
                response = self.render(
                    path, 401, f"{message}: {hint}", "unauthorized",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check_peer(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[int, str, str] | None:
        client = scope.get("client")
        if client and self.clients:
            try:
                address = ipaddress.ip_address(client[0])
            except ValueError:
                address = None
            if address is not None and not any(address in n for n in self.clients):
                return 403, "client address not allowed (NPU_PROXY_ALLOWED_CLIENTS)", "forbidden"
        host = headers.get(b"host")
        if not self.hosts.allows(host.decode("latin-1") if host else None):
            return 403, "Host header not allowed (NPU_PROXY_ALLOWED_HOSTS)", "forbidden"
        return None

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


def policy_options(settings: Settings) -> dict[str, Any]:
    """:class:`SecurityMiddleware`'s keyword arguments (all but ``render``) from settings."""
    clients = [] if settings.allowed_clients == ["*"] else parse_networks(
        settings.allowed_clients)
    return {
        "api_key": settings.api_key.get_secret_value() if settings.api_key else None,
        "clients": clients,
        "hosts": HostPolicy(settings.allowed_hosts, clients or parse_networks(DEFAULT_CLIENTS)),
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

"""The HTTP edge: cross-site requests, forwarded headers, WebSocket scopes, JSON limits,
and the connection guards (slow clients, per-client limit, allow-list at connect)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from core_test_plugins import SimBackend, tiny_plugins
from npu_proxy.boot import StagedApp, StagedServer
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.security import SecurityMiddleware, origins_regex, policy_options
from npu_proxy.settings import DEFAULT_ORIGINS, Settings
from npu_proxy.testing import LiveServer, free_port, make_app, test_settings
from npu_proxy.web import MAX_JSON_DEPTH, MAX_JSON_INT_DIGITS, json_depth, parse_json
from starlette.types import Message, Receive, Scope, Send

EVIL = "https://evil.example"
LOCAL = "http://localhost:5173"


def tiny_app(settings: Settings) -> Any:
    return make_app(settings, [], tiny_plugins(SimBackend()))


@pytest.fixture
def backend() -> SimBackend:
    return SimBackend()


@pytest.fixture
def server(tmp_path: Path, backend: SimBackend) -> Iterator[LiveServer]:
    app = make_app(test_settings(tmp_path), [], tiny_plugins(backend))
    with LiveServer(app) as live:
        yield live


# --- cross-site requests ---------------------------------------------------------------


def test_a_cross_origin_simple_post_is_refused_before_any_work(
        server: LiveServer, backend: SimBackend) -> None:
    body = json.dumps({"model": "mock", "prompt": "hi"})
    refused = httpx.post(server.url + "/tiny/generate", content=body,
                         headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert refused.status_code == 403
    assert "cross-origin" in refused.json()["tiny_error"]  # in the dialect's shape
    assert "access-control-allow-origin" not in refused.headers
    assert backend.counters.tokenizations == 0 and backend.counters.loads == 0
    allowed = httpx.post(server.url + "/tiny/generate", content=body,
                         headers={"Origin": LOCAL, "Content-Type": "text/plain"})
    assert allowed.status_code == 200 and backend.counters.loads == 1
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = httpx.request(method, server.url + "/tiny/models",
                                 headers={"Origin": EVIL})
        assert response.status_code == 403, method


def test_allowed_origins_and_clients_without_origin_still_work(server: LiveServer) -> None:
    url = server.url + "/tiny/models"
    assert httpx.get(url).status_code == 200  # curl, SDKs: no Origin
    allowed = httpx.get(url, headers={"Origin": LOCAL})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == LOCAL


def test_a_page_served_here_may_call_the_api_from_any_accepted_host(
        server: LiveServer) -> None:
    # /docs opened at the machine's LAN address: same origin, not cross-site
    lan = {"Host": "192.168.1.20:11435", "Origin": "http://192.168.1.20:11435"}
    assert httpx.get(server.url + "/tiny/models", headers=lan).status_code == 200
    other_port = {"Host": "192.168.1.20:11435", "Origin": "http://192.168.1.20:8080"}
    assert httpx.get(server.url + "/tiny/models", headers=other_port).status_code == 403
    rebound = {"Host": "evil.example:11435", "Origin": "http://evil.example:11435"}
    assert httpx.get(server.url + "/tiny/models", headers=rebound).status_code == 403


def test_health_answers_any_origin(server: LiveServer) -> None:
    for path in ("/health", "/health/devices"):
        assert httpx.get(server.url + path, headers={"Origin": EVIL}).status_code == 200


def test_preflights_pass_the_peer_checks_but_not_the_key(tmp_path: Path) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization"}
    settings = test_settings(tmp_path, api_key="k-123", allowed_hosts="")
    with LiveServer(tiny_app(settings)) as live:
        url = live.url + "/tiny/generate"
        ok = httpx.options(url, headers={"Origin": LOCAL, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == LOCAL
        assert httpx.options(url, headers={"Origin": EVIL, **preflight}).status_code == 403
        rebound = httpx.options(url, headers={"Origin": LOCAL, "Host": "evil.example",
                                              **preflight})
        assert rebound.status_code == 403  # the Host check runs for OPTIONS too


def test_port_wildcards_match_digits_only() -> None:
    import re

    pattern = re.compile(origins_regex(DEFAULT_ORIGINS))
    for origin in ("http://localhost:3000", "https://127.0.0.1:8443", "http://localhost",
                   "vscode-webview://abc123", "http://[::1]:8080"):
        assert pattern.match(origin), origin
    for origin in ("http://localhost:@evil.example", "http://localhost:80@evil.example",
                   "http://localhost:", "http://localhost:3000/x", "vscode-webview://a@b",
                   "vscode-webview://a/b", "https://evil.example", "null"):
        assert not pattern.match(origin), origin


# --- WebSocket scopes ------------------------------------------------------------------


async def run_websocket(tmp_path: Path, headers: list[tuple[bytes, bytes]],
                        **overrides: Any) -> tuple[list[Message], bool]:
    """A WebSocket handshake through the middleware: what it sent, whether the app ran."""
    reached = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached = True

    middleware = SecurityMiddleware(
        app, render=lambda *a: app, **policy_options(test_settings(tmp_path, **overrides)))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/api/chat", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"localhost"), *headers]}
    await middleware(scope, receive, send)
    return sent, reached


async def test_websocket_handshakes_go_through_the_checks(tmp_path: Path) -> None:
    sent, reached = await run_websocket(tmp_path, [(b"origin", EVIL.encode())])
    assert sent == [{"type": "websocket.close", "code": 1008}] and not reached
    sent, reached = await run_websocket(tmp_path, [], api_key="k-123")
    assert sent[0]["type"] == "websocket.close" and not reached
    sent, reached = await run_websocket(tmp_path, [(b"x-api-key", b"k-123")],
                                        api_key="k-123")
    assert reached and not sent
    sent, reached = await run_websocket(tmp_path, [], allowed_clients="10.0.0.0/8")
    assert sent[0]["type"] == "websocket.close" and not reached


# --- JSON limits -----------------------------------------------------------------------


def test_json_depth_and_integer_size_are_bounded() -> None:
    assert json_depth(b'{"a": "[[[[[[[["}') == 0
    nested = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert json_depth(nested) == MAX_JSON_DEPTH + 1
    assert json_depth(b'["' + b"[" * 500 + b'"]') <= 1  # brackets in a string
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    for body, words in ((nested, "nested deeper"),
                        (b"[" * 1000 + b"]" * 1000, "nested deeper"),
                        (b'{"seed": ' + b"7" * 4400 + b"}", "digits"),
                        (b'{"seed": ' + b"7" * (MAX_JSON_INT_DIGITS + 1) + b"}", "digits")):
        with pytest.raises(InvalidRequestError, match=words):
            parse_json(body)
    longest = b"9" * MAX_JSON_INT_DIGITS
    assert parse_json(b'{"seed": -' + longest + b"}")["seed"] == -int(longest)


def test_json_limits_answer_400_through_a_dialect(server: LiveServer) -> None:
    url = server.url + "/tiny/generate"
    deep = '{"model": "mock", "prompt": "hi", "x": ' + "[" * 1000 + "]" * 1000 + "}"
    response = httpx.post(url, content=deep)
    assert response.status_code == 400 and "nested" in response.json()["tiny_error"]
    big = '{"model": "mock", "prompt": "hi", "seed": ' + "1" * 4400 + "}"
    response = httpx.post(url, content=big)
    assert response.status_code == 400 and "digits" in response.json()["tiny_error"]


# --- the connection guards (a real StagedServer, as `npu-proxy serve` runs) -------------


@contextlib.contextmanager
def staged_server(tmp_path: Path, compose: Callable[[Settings], Any] = tiny_app,
                  **overrides: Any) -> Iterator[str]:
    settings = test_settings(tmp_path, **overrides)
    app = StagedApp(lambda: compose(settings), settings, begin_on_startup=False)
    port = free_port()
    server = StagedServer(uvicorn.Config(app, host="127.0.0.1", port=port,
                                         log_level="warning"), app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not app.ready:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bytes:
    """Send ``trickle`` a byte every 0.2 s until the server closes; what it answered.

    Fails if the connection is still open after ``seconds``.
    """
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    position = 0
    while time.monotonic() < deadline:
        if trickle:
            try:
                sock.send(trickle[position % len(trickle):position % len(trickle) + 1])
            except OSError:
                return received
            position += 1
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection was still open after {seconds} s")


def test_slow_headers_slow_bodies_and_silent_clients_are_cut(tmp_path: Path) -> None:
    with staged_server(tmp_path, header_timeout=1, body_timeout=1) as url:
        port = port_of(url)
        results: dict[str, bytes] = {}
        health: list[int] = []

        def slow_head() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
                results["head"] = closed_within(sock, 20, b"X-Slow: aaaaaaaaaa\r\n")

        def slow_body() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /tiny/generate HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
                results["body"] = closed_within(sock, 20, b'{"model": "mock"')

        def silent() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                results["silent"] = closed_within(sock, 20)

        threads = [threading.Thread(target=f) for f in (slow_head, slow_body, silent)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            health.append(httpx.get(url + "/health", timeout=10).status_code)
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        assert set(results) == {"head", "body", "silent"}
        assert results["head"].startswith(b"HTTP/1.1 408")
        assert b"HTTP/1.1 200" not in results["body"]
        assert health and set(health) == {200}  # /health answered all along
        # a client that keeps up is not cut
        ok = httpx.post(url + "/tiny/generate", json={"model": "mock", "prompt": "hi"})
        assert ok.status_code != 408 and ok.status_code < 500


def test_one_client_holds_a_bounded_number_of_connections(tmp_path: Path) -> None:
    with staged_server(tmp_path, max_client_connections=3) as url:
        port = port_of(url)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", port)) as extra:
                answer = closed_within(extra, 20)
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"retry-after" in answer.lower() and b"too many connections" in answer
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while True:  # the slots free as the server notices the closes
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_the_allow_list_refuses_at_connection_time(tmp_path: Path) -> None:
    with staged_server(tmp_path, allowed_clients="10.0.0.0/8") as url:
        with socket.create_connection(("127.0.0.1", port_of(url))) as sock:
            answer = closed_within(sock, 20)  # refused before sending anything
        assert answer.startswith(b"HTTP/1.1 403")
        assert b"NPU_PROXY_ALLOWED_CLIENTS" in answer
        response = httpx.get(url + "/health")
        assert response.status_code == 403 and "client" in response.json()["error"]


def echo_client(settings: Settings) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return SecurityMiddleware(app, render=lambda *a: app, **policy_options(settings))


def test_forwarded_headers_do_not_change_the_client(tmp_path: Path) -> None:
    with staged_server(tmp_path, echo_client, allowed_clients="127.0.0.0/8,::1") as url:
        seen = httpx.get(url + "/anything", headers={"X-Forwarded-For": "8.8.8.8",
                                                    "X-Forwarded-Proto": "https"})
        assert seen.status_code == 200
        assert seen.json() == {"client": "127.0.0.1", "scheme": "http"}

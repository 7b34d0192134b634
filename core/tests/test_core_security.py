"""Network safety through a real server: API key, client and Host checks, CORS, body limit."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_test_plugins import SimBackend, tiny_plugins
from npu_proxy.logs import SafeFormatter, escape_controls
from npu_proxy.security import HostPolicy, api_key_of, exposure_warning, parse_networks
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, assert_routes_need_key, make_app, test_settings

KEY = "sk-test-sentinel-0123456789"


def tiny_app(settings: Settings) -> Any:
    """The core with the test plugins only (the cross-plugin suite checks them all)."""
    return make_app(settings, [], tiny_plugins(SimBackend()))


@pytest.fixture
def keyed(tmp_path: Path) -> Any:
    with LiveServer(tiny_app(test_settings(tmp_path, api_key=KEY))) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_app(test_settings(tmp_path))) as live:
        yield live


def test_every_route_but_health_needs_the_key(keyed: LiveServer) -> None:
    routes = assert_routes_need_key(keyed, KEY)
    assert ("GET", "/openapi.json") in routes and ("GET", "/docs") in routes
    assert ("POST", "/tiny/generate") in routes


def test_bearer_and_x_api_key_are_accepted(keyed: LiveServer) -> None:
    url = keyed.url + "/health/devices"
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(url, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_api_key_header_parsing() -> None:
    assert api_key_of({b"authorization": b"Bearer  abc "}) == "abc"
    assert api_key_of({b"x-api-key": b"k"}) == "k"
    assert api_key_of({b"authorization": b"Bearer"}) is None


def test_host_header_against_dns_rebinding(server: LiveServer) -> None:
    url = server.url + "/health"
    for host in ("localhost:11435", "127.0.0.1", "[::1]:80", "192.168.1.20:11435",
                 "172.29.96.1", socket.gethostname(), "app.localhost"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host
    for host in ("evil.example.com", "8.8.8.8", "localhost.evil.com"):
        refused = httpx.get(url, headers={"Host": host})
        assert refused.status_code == 403, host
        assert "Host" in refused.json()["error"]


def test_host_policy_patterns() -> None:
    policy = HostPolicy(["*.corp.example"], parse_networks(["10.0.0.0/8"]))
    assert policy.allows("llm.corp.example:11435") and policy.allows("10.1.2.3")
    assert not policy.allows("corp.example.evil") and not policy.allows("192.168.0.1")
    assert HostPolicy(["*"], []).allows("anything.at.all")


def test_clients_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, allowed_clients="10.0.0.0/8")
    with LiveServer(tiny_app(settings)) as server:
        response = httpx.get(server.url + "/health")
        assert response.status_code == 403 and "client" in response.json()["error"]
    with LiveServer(tiny_app(test_settings(tmp_path))) as server:  # default: loopback ok
        assert httpx.get(server.url + "/health").status_code == 200


def test_cors_allows_local_pages_and_editors_only(server: LiveServer) -> None:
    url = server.url + "/health"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for origin in ("http://localhost:3000", "vscode-webview://abc123", "http://127.0.0.1:8080"):
        response = httpx.options(url, headers={"Origin": origin, **preflight})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-credentials" not in response.headers
    evil = httpx.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    plain = httpx.get(url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_body_limit_before_parsing(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, max_body="2KiB")
    with LiveServer(tiny_app(settings)) as server:
        url = server.url + "/health"
        declared = httpx.post(url, content=b"x" * 4096)
        assert declared.status_code == 413 and "2048 bytes" in declared.json()["error"]

        def chunks() -> Any:
            for _ in range(8):
                yield b"y" * 1024  # sent chunked, with no Content-Length

        chunked = httpx.post(url, content=chunks())
        assert chunked.status_code == 413
        small = httpx.post(url, content=b"{}")
        assert small.status_code == 405  # under the limit: reaches routing


def test_exposure_warning_only_beyond_loopback_without_key(tmp_path: Path) -> None:
    warning = exposure_warning(Settings(host="0.0.0.0", model_path=tmp_path))
    assert warning is not None and "NPU_PROXY_API_KEY" in warning and "0.0.0.0:11435" in warning
    assert exposure_warning(Settings(host="127.0.0.1")) is None
    assert exposure_warning(Settings(host="0.0.0.0", api_key="k")) is None


def test_log_lines_cannot_be_forged() -> None:
    assert escape_controls("a\r\nINFO fake") == "a\\r\\nINFO fake"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "model %s", ("evil\nline",), None)
    assert "\n" not in SafeFormatter("%(message)s").format(record)


def test_api_key_never_appears_in_settings_repr() -> None:
    assert KEY not in repr(Settings(api_key=KEY))

"""Refusals in each dialect's own shape, secrets that never leak anywhere, cross-site
requests refused before any work, and JSON parser limits answered with 400."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings

KEY = "npk-sentinel-4f9a2c7e1b"
HF_TOKEN = "hf_sentinelTOKEN8d3e5a"


def ollama_shape(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)


def openai_shape(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def anthropic_shape(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("type") == "error"
            and {"type", "message"} <= set(body.get("error", {})))


DIALECTS = [
    ("/api/chat", ollama_shape),
    ("/v1/chat/completions", openai_shape),
    ("/v1/messages", anthropic_shape),
]


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    # Pulls go to a closed loopback port: the error path runs, nothing leaves the machine.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    settings = test_settings(tmp_path, api_key=KEY, max_body="64KiB")
    with LiveServer(make_app(settings)) as server:
        yield server


@pytest.mark.parametrize(("path", "shape"), DIALECTS)
def test_refusals_are_in_the_dialect_shape(guarded: LiveServer, path: str, shape: Any) -> None:
    url = guarded.url + path
    missing = httpx.post(url, json={})
    assert missing.status_code == 401 and shape(missing.json())
    wrong = httpx.post(url, json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and shape(wrong.json())
    host = httpx.post(url, json={}, headers={"x-api-key": KEY, "Host": "evil.example"})
    assert host.status_code == 403 and shape(host.json())
    big = httpx.post(url, content=b"x" * 70_000, headers={"x-api-key": KEY})
    assert big.status_code == 413 and shape(big.json())
    ok = httpx.post(url, json={}, headers={"x-api-key": KEY})
    assert ok.status_code == 400 and shape(ok.json())  # through the gate, then validated


def test_secrets_never_leak(guarded: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {KEY}"}
    bodies: list[str] = []
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": KEY}]}),
        ("POST", "/api/chat", {"model": "mock", "messages": "not a list"}),
        ("POST", "/api/generate", {"model": "../../etc/passwd", "prompt": HF_TOKEN}),
        ("POST", "/api/pull", {"model": "org/definitely-missing"}),
        ("POST", "/api/pull", {"model": "C:\\x"}),
        ("POST", "/api/show", {"model": "missing"}),
        ("DELETE", "/api/delete", {"model": "missing"}),
        ("POST", "/api/embed", {"model": "mock", "input": [KEY]}),
        ("POST", "/v1/chat/completions", {"model": "mock", "messages": [], "user": KEY}),
        ("POST", "/v1/embeddings", {"model": "nope", "input": HF_TOKEN}),
        ("GET", "/v1/models/..%2F..%2Fetc", None),
        ("POST", "/v1/messages", {"model": "nope", "max_tokens": 1, "messages": [
            {"role": "user", "content": KEY}]}),
        ("POST", "/v1/messages", {"model": "mock", "max_tokens": "x"}),
        ("GET", "/no/such/route", None),
        ("GET", "/metrics", None),
        ("GET", "/health", None),
        ("GET", "/openapi.json", None),
    ]
    for method, path, body in requests:
        for headers in (auth, {"x-api-key": "wrong-" + KEY[:4]}, {}):
            response = httpx.request(method, guarded.url + path, json=body, headers=headers,
                                     timeout=30)
            assert response.status_code < 500 or response.status_code in (501, 502, 503), path
            bodies.append(response.text)
            bodies.extend(f"{k}: {v}" for k, v in response.headers.items())
    # The pull above really tried the hub with the token configured: nothing came back.
    texts = "\n".join(bodies) + "\n" + caplog.text
    assert KEY not in texts.replace(f'"content":"{KEY}"', "")  # echo of our own prompt aside
    assert HF_TOKEN not in texts
    assert KEY not in caplog.text and HF_TOKEN not in caplog.text


# --- cross-site requests and parser limits (no API key: the default) -----------------

EVIL = "https://evil.example"

Shape = Callable[[Any], bool]

#: (path, a valid body, the dialect's error shape)
ROUTES: list[tuple[str, dict[str, Any], Shape]] = [
    ("/api/chat", {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
     ollama_shape),
    ("/api/generate", {"model": "mock", "prompt": "hi"}, ollama_shape),
    ("/api/embed", {"model": "mock-embed", "input": "hi"}, ollama_shape),
    ("/api/pull", {"model": "hf.co/org/repo"}, ollama_shape),
    ("/api/delete", {"model": "mock"}, ollama_shape),
    ("/v1/chat/completions",
     {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}, openai_shape),
    ("/v1/completions", {"model": "mock", "prompt": "hi"}, openai_shape),
    ("/v1/embeddings", {"model": "mock-embed", "input": "hi"}, openai_shape),
    ("/v1/messages", {"model": "mock", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}, anthropic_shape),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """Defaults: no API key, the default origins and limits."""
    with LiveServer(make_app(test_settings(tmp_path))) as live:
        yield live


def model_files(server: LiveServer) -> list[str]:
    root = server.ctx.settings.model_path
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def tags(server: LiveServer) -> set[str]:
    return {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}


def test_a_browser_cross_site_copy_is_refused_and_changes_nothing(server: LiveServer) -> None:
    before = model_files(server)
    # what a page on another site makes a browser send: no preflight for text/plain
    refused = httpx.post(server.url + "/api/copy",
                         content='{"source":"mock","destination":"csrf-proof"}',
                         headers={"Origin": EVIL, "Content-Type": "text/plain",
                                  "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and ollama_shape(refused.json())
    assert "csrf-proof:latest" not in tags(server)
    assert model_files(server) == before
    allowed = httpx.post(server.url + "/api/copy",
                         json={"source": "mock", "destination": "same-site"},
                         headers={"Origin": "http://localhost:3000"})
    assert allowed.status_code == 200 and "same-site:latest" in tags(server)


@pytest.mark.parametrize(("path", "body", "shape"), ROUTES)
def test_every_route_refuses_another_origin_in_its_shape(
        server: LiveServer, path: str, body: dict[str, Any], shape: Shape) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    response = httpx.request(method, server.url + path, content=json.dumps(body),
                             headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert response.status_code == 403 and shape(response.json()), response.text
    assert "mock:latest" in tags(server)  # the delete did not happen either


DEEP = "[" * 1000 + "]" * 1000
HUGE_INT = "1" * 4400


@pytest.mark.parametrize(("path", "body", "shape"), ROUTES)
@pytest.mark.parametrize("case", ["deep", "huge-int"])
def test_parser_limits_answer_400_in_the_dialect_shape(
        server: LiveServer, path: str, body: dict[str, Any], shape: Shape, case: str) -> None:
    valid = json.dumps(body)
    extra = DEEP if case == "deep" else HUGE_INT
    content = valid[:-1] + f', "extra": {extra}' + "}"
    method = "DELETE" if path == "/api/delete" else "POST"
    response = httpx.request(method, server.url + path, content=content,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and shape(response.json()), response.text


def test_create_with_parameters_nested_900_deep_answers_400(server: LiveServer) -> None:
    parameters = '{"a": ' * 900 + "1" + "}" * 900
    content = '{"model": "deep", "from": "mock", "parameters": ' + parameters + "}"
    response = httpx.post(server.url + "/api/create", content=content)
    assert response.status_code == 400 and ollama_shape(response.json())
    assert "deep:latest" not in tags(server)

"""Refusals in each dialect's own shape, and secrets that never leak anywhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
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

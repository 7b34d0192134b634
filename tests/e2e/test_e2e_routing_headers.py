"""Every dialect tells the truth about where a request ran and why (simulated devices)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from npu_proxy.testing import LiveServer, backend_plugin, make_app, test_settings
from npu_proxy_mock.backend import MockBackend

SHORT = "hello"
LONG = "word " * 80


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    devices = backend_plugin(
        MockBackend("NPU", token_delay=0.001, max_prompt_len=50),
        MockBackend("CPU", token_delay=0.001),
    )
    settings = test_settings(tmp_path, token_limit=1000)
    with LiveServer(make_app(settings, ["mock", "ollama", "openai", "anthropic"],
                             {"devices": devices})) as live:
        yield live


def calls(text: str) -> list[tuple[str, dict[str, object]]]:
    chat = [{"role": "user", "content": text}]
    return [
        ("/api/chat", {"model": "mock", "messages": chat, "stream": False}),
        ("/api/generate", {"model": "mock", "prompt": text, "stream": False}),
        ("/v1/chat/completions", {"model": "mock", "messages": chat}),
        ("/v1/completions", {"model": "mock", "prompt": text}),
        ("/v1/responses", {"model": "mock", "input": text}),
        ("/v1/messages", {"model": "mock", "messages": chat, "max_tokens": 8}),
    ]


@pytest.mark.parametrize(("text", "device", "reason"), [
    (SHORT, "NPU", "preferred_device"),
    (LONG, "CPU", "device_prompt_limit_exceeded"),
])
def test_headers_on_every_dialect(server: LiveServer, text: str, device: str,
                                  reason: str) -> None:
    for path, body in calls(text):
        response = httpx.post(server.url + path, json=body, timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-npu-proxy-device"] == device, path
        assert response.headers["x-npu-proxy-route-reason"] == reason, path
        assert int(response.headers["x-npu-proxy-token-count"]) > (50 if text == LONG else 0)


def test_streams_carry_the_headers_too(server: LiveServer) -> None:
    for path, body in calls(LONG):
        with httpx.stream("POST", server.url + path, json={**body, "stream": True},
                          timeout=30) as response:
            assert response.headers["x-npu-proxy-device"] == "CPU", path
            response.read()

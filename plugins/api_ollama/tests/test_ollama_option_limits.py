"""Option values the device would reject: 400 in Ollama's shape, or Ollama's meaning."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend

#: What Ollama clients send that means something (a negative seed: random) or is
#: larger than any device takes (clamped): answered, never a 500.
ACCEPTED = [
    {"seed": -1}, {"seed": -5}, {"seed": 2**64 - 1}, {"top_k": 1e30}, {"top_k": 2**64},
    {"num_predict": 1e30}, {"num_ctx": 2**40}, {"temperature": 0}, {"top_p": 1e-9},
]
REFUSED = [
    ({"seed": 2**70}, "seed"), ({"seed": 1e30}, "seed"), ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.5}, "top_p"), ({"top_k": -3}, "top_k"),
    ({"presence_penalty": 9}, "presence_penalty"), ({"frequency_penalty": -9},
                                                    "frequency_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"), ({"min_p": 2}, "min_p"), ({"min_p": 1}, "min_p"),
    ({"top_p": 0}, "top_p"),
]


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("options", ACCEPTED, ids=[str(o) for o in ACCEPTED])
def test_meaningful_or_clamped_values_are_answered(
    server: LiveServer, device: MockBackend, route: str, options: dict[str, Any]
) -> None:
    body = _body(route, options)
    answer = httpx.post(server.url + route, json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
    streamed = httpx.post(server.url + route, json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 200
    assert '"error"' not in streamed.text


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize(("options", "name"), REFUSED, ids=[str(o) for o, _ in REFUSED])
def test_out_of_range_values_are_a_400_naming_the_option(
    server: LiveServer, device: MockBackend, route: str, options: dict[str, Any], name: str
) -> None:
    for stream in (False, True):
        answer = httpx.post(server.url + route, json={**_body(route, options), "stream": stream},
                            timeout=30)
        assert answer.status_code == 400, answer.text
        assert name in answer.json()["error"]
    assert device.counters.started == 0


def _body(route: str, options: dict[str, Any]) -> dict[str, Any]:
    if route == "/api/chat":
        return {"model": "mock", "messages": [{"role": "user", "content": "hi"}],
                "options": options, "stream": False}
    return {"model": "mock", "prompt": "hi", "options": options, "stream": False}

"""Extreme ``keep_alive`` values: bounded when parsed (forever, or a 400 for NaN), never a
500 after the work is done; /api/ps shows a sane expiry, and the model still unloads."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend

#: raw JSON bodies, so values no client library sends (1e400 is infinity to Python)
FOREVER = ["1e400", "-1e400", '"99999999999999999999h"', "1" + "0" * 400,
           "-" + "9" * 400, '"-99999999999999999999h"']


def _post(server: LiveServer, route: str, keep_alive: str) -> httpx.Response:
    prompt = ('"messages": [{"role": "user", "content": "hi"}]' if route == "/api/chat"
              else '"prompt": "hi"')
    body = f'{{"model": "mock", {prompt}, "stream": false, "keep_alive": {keep_alive}}}'
    return httpx.post(server.url + route, content=body,
                      headers={"Content-Type": "application/json"}, timeout=30)


def _expiry(server: LiveServer) -> datetime:
    running = ollama.Client(host=server.url).ps().models
    assert [m.model for m in running] == ["mock:latest"]
    expires = running[0].expires_at
    assert expires is not None
    return expires


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("keep_alive", FOREVER)
def test_beyond_the_longest_duration_means_forever(
    server: LiveServer, device: MockBackend, route: str, keep_alive: str
) -> None:
    answer = _post(server, route, keep_alive)
    assert answer.status_code == 200, answer.text
    expires = _expiry(server)
    assert expires.year == 2318  # what Ollama shows for a model kept forever
    # ... and an unload still works: the model was released, nobody waits on it
    ollama.Client(host=server.url).generate(model="mock", prompt="", keep_alive=0)
    assert ollama.Client(host=server.url).ps().models == []
    assert device.counters.unloads == 1


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat", "/api/embed"])
def test_nan_is_a_400(server: LiveServer, device: MockBackend, route: str) -> None:
    body = ('{"model": "mock-embed", "input": "x", "keep_alive": NaN}' if route == "/api/embed"
            else '{"model": "mock", "prompt": "hi", "keep_alive": NaN, '
                 '"messages": [{"role": "user", "content": "hi"}]}')
    answer = httpx.post(server.url + route, content=body,
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 400
    assert "keep_alive" in answer.json()["error"]
    assert device.counters.started == 0


def test_a_long_but_finite_keep_alive_is_kept(server: LiveServer) -> None:
    answer = _post(server, "/api/generate", '"2000000h"')  # about 228 years
    assert answer.status_code == 200
    years = (_expiry(server) - datetime.now(UTC)).days / 365.25
    assert 227 < years < 229


def test_a_short_keep_alive_after_a_forever_one_unloads(
    server: LiveServer, device: MockBackend
) -> None:
    assert _post(server, "/api/generate", "1e400").status_code == 200
    assert _post(server, "/api/generate", "0").status_code == 200
    assert ollama.Client(host=server.url).ps().models == []
    assert device.counters.unloads == 1

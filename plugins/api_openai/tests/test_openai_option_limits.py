"""Option values the device would reject, and the cap on ``n`` (NPU_PROXY_MAX_CHOICES)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, MockCounters

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "hi"}]

ACCEPTED = [{"seed": -1}, {"seed": 2**64 - 1}, {"top_k": 10**30}, {"max_tokens": 2**32 - 1}]
REFUSED = [({"seed": 2**70}, "seed"), ({"top_k": -1}, "top_k"), ({"top_p": 1.5}, "top_p"),
           ({"temperature": -1}, "temperature"), ({"presence_penalty": 3}, "presence_penalty"),
           ({"repetition_penalty": 0}, "repetition_penalty"), ({"top_p": 0}, "top_p"),
           ({"min_p": 1}, "min_p"), ({"max_tokens": 0}, "max_tokens")]


def _body(route: str, options: dict[str, Any]) -> dict[str, Any]:
    if route == CHAT:
        return {"model": "mock", "messages": HELLO, **options}
    return {"model": "mock", "prompt": "hi", **options}


@pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("options", ACCEPTED, ids=[str(o) for o in ACCEPTED])
def test_meaningful_or_clamped_values_are_answered(
    http: httpx.Client, route: str, options: dict[str, Any]
) -> None:
    for stream in (False, True):
        answer = http.post(route, json={**_body(route, options), "stream": stream})
        assert answer.status_code == 200, answer.text
        assert '"error"' not in answer.text


@pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("options", "param"), REFUSED, ids=[str(o) for o, _ in REFUSED])
def test_out_of_range_values_are_a_400_naming_the_parameter(
    http: httpx.Client, counters: MockCounters, route: str, options: dict[str, Any],
    param: str,
) -> None:
    for stream in (False, True):
        answer = http.post(route, json={**_body(route, options), "stream": stream})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
    assert counters.started == 0


def test_a_nan_temperature_is_a_400(http: httpx.Client) -> None:
    # Python's JSON reader takes NaN, so the value reaches validation.
    body = '{"model": "mock", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    answer = http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "temperature"


def test_n_is_capped_by_the_setting(
    server_with: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_MAX_CHOICES", "3")
    with server_with(MockBackend(token_delay=0.001)) as server, httpx.Client(
            base_url=server.url, timeout=30) as http:
        three = http.post(CHAT, json={"model": "mock", "messages": HELLO, "n": 3})
        assert three.status_code == 200
        assert len(three.json()["choices"]) == 3
        for stream in (False, True):
            four = http.post(CHAT, json={"model": "mock", "messages": HELLO, "n": 4,
                                         "stream": stream})
            assert four.status_code == 400
            assert four.json()["error"]["param"] == "n"
            assert "at most 3" in four.json()["error"]["message"]
        one_too_many = http.post(COMPLETIONS, json={"model": "mock", "prompt": "hi", "n": 4})
        assert one_too_many.status_code == 400
        assert one_too_many.json()["error"]["param"] == "n"


def test_the_default_cap_is_eight(http: httpx.Client, counters: MockCounters) -> None:
    eight = http.post(CHAT, json={"model": "mock", "messages": HELLO, "n": 8})
    assert eight.status_code == 200 and len(eight.json()["choices"]) == 8
    nine = http.post(CHAT, json={"model": "mock", "messages": HELLO, "n": 9})
    assert nine.status_code == 400 and nine.json()["error"]["param"] == "n"
    assert counters.started == 8


def test_the_last_seed_wraps_for_the_next_choice(http: httpx.Client) -> None:
    answer = http.post(CHAT, json={"model": "mock", "messages": HELLO, "n": 2,
                                   "seed": 2**64 - 1})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 2

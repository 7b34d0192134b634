"""Sampling values outside the core's ranges: a 400 in Anthropic's error shape, streamed
or not, before anything reaches the device."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockCounters

REFUSED = [({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"), ({"temperature": -0.5},
                                                               "temperature")]


@pytest.mark.parametrize(("options", "name"), REFUSED, ids=[str(o) for o, _ in REFUSED])
def test_out_of_range_values_are_a_400(
    server: LiveServer, counters: MockCounters, options: dict[str, Any], name: str
) -> None:
    for stream in (False, True):
        answer = httpx.post(server.url + "/v1/messages", timeout=30, json={
            "model": "claude-3-5-haiku", "max_tokens": 8, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}], **options})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert name in body["error"]["message"]
    assert counters.started == 0


def test_a_huge_top_k_is_clamped_and_answered(server: LiveServer) -> None:
    answer = httpx.post(server.url + "/v1/messages", timeout=30, json={
        "model": "claude-3-5-haiku", "max_tokens": 8, "top_k": 2**32 - 1,
        "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text

"""A single prompt longer than the context keeps its end and is answered (Ollama's default
``truncate``), saying so in ``X-NPU-Proxy-Truncated``; ``truncate: false`` refuses it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, count_tokens

#: 9,000 numbered words: more than the mock model's 8,192-token context
LONG = " ".join(f"w{i}" for i in range(9000)) + " and the question at the end"


def _bodies(stream: bool, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    common = {"model": "mock", "stream": stream, **extra}
    return [
        ("/api/generate", {**common, "prompt": LONG}),
        ("/api/generate", {**common, "prompt": LONG, "raw": True}),
        ("/api/chat", {**common, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "an old question " * 50},
            {"role": "assistant", "content": "an old answer"},
            {"role": "user", "content": LONG}]}),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_the_end_of_a_long_prompt_is_kept_and_answered(
    server: LiveServer, device: MockBackend, stream: bool
) -> None:
    for route, body in _bodies(stream):
        answer = httpx.post(server.url + route, json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        seen = device.counters.prompts[-1]
        assert seen.rstrip().endswith("the question at the end") or (
            "the question at the end" in seen)
        assert "w0 " not in seen and " w1 " not in seen  # the start was cut
        if route == "/api/chat":
            assert "You are terse." in seen and "an old question" not in seen
        whole = count_tokens(LONG)
        dropped = int(answer.headers["X-NPU-Proxy-Truncated"])
        kept = int(answer.headers["X-NPU-Proxy-Token-Count"])
        assert kept == count_tokens(seen)
        # room is left to answer: a quarter of the context
        assert kept <= 8192 - 8192 // 4
        assert dropped >= whole - kept
        lines = answer.text.strip().splitlines()
        final = httpx.Response(200, content=lines[-1]).json()
        assert final["done"] is True and final["prompt_eval_count"] == kept


def test_a_prompt_that_fits_carries_no_truncation_header(server: LiveServer) -> None:
    answer = httpx.post(server.url + "/api/generate", timeout=60,
                        json={"model": "mock", "prompt": "short", "stream": False})
    assert answer.status_code == 200
    assert "X-NPU-Proxy-Truncated" not in answer.headers


def test_truncate_false_keeps_the_400_with_the_true_count(
    server: LiveServer, device: MockBackend
) -> None:
    for route, body in _bodies(False, truncate=False):
        answer = httpx.post(server.url + route, json=body, timeout=60)
        assert answer.status_code == 400
        assert "context" in answer.json()["error"]
        assert "8192" in answer.json()["error"]
    assert device.counters.started == 0


def test_num_predict_sets_the_room_left_to_answer(
    server: LiveServer, device: MockBackend
) -> None:
    answer = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": "mock", "prompt": LONG, "stream": False,
        "options": {"num_ctx": 1000, "num_predict": 100}})
    assert answer.status_code == 200
    assert 850 < int(answer.headers["X-NPU-Proxy-Token-Count"]) <= 900


def test_a_long_conversation_with_tool_calls_is_fitted(server: LiveServer) -> None:
    call = {"function": {"name": "lookup", "arguments": {"q": "x"}}}
    turns: list[dict[str, Any]] = []
    for i in range(40):
        turns += [{"role": "user", "content": f"question {i} " + "more " * 20},
                  {"role": "assistant", "content": "", "tool_calls": [call]},
                  {"role": "tool", "content": "result " * 5, "tool_name": "lookup"}]
    turns.append({"role": "user", "content": "the last question"})
    answer = httpx.post(server.url + "/api/chat", timeout=60, json={
        "model": "mock", "messages": turns, "stream": False, "options": {"num_ctx": 300}})
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["X-NPU-Proxy-Truncated"]) > 0

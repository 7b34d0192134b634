"""Option values the real CPU backend (OpenVINO GenAI) would reject, in all three dialects:
a 400 in the dialect's shape, or the documented clamp, never a 500 and never an error
event after a 200."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer

LLM = "smollm2:135m"

#: (options, the one parameter a refusal names, or None when the value is answered)
OLLAMA = [
    ({"seed": -1}, None), ({"seed": 2**64 - 1}, None), ({"top_k": 1e30}, None),
    # a huge limit: until the context ends (kept small here, so the test is quick)
    ({"num_predict": 1e30, "num_ctx": 64}, None), ({"top_p": 0}, "top_p"), ({"min_p": 1}, "min_p"),
    ({"seed": 2**70}, "seed"), ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"presence_penalty": 9}, "presence_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
]
OPENAI = [
    ({"seed": -1}, None), ({"seed": 2**64 - 1}, None), ({"top_k": 10**30}, None),
({"top_p": 0}, "top_p"), ({"min_p": 1}, "min_p"),
    ({"seed": 2**70}, "seed"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
]
ANTHROPIC = [
    ({"top_k": 2**32 - 1}, None), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": -1}, "temperature"), ({"top_k": -1}, "top_k"),
]


def _check(answer: httpx.Response, refused: str | None) -> None:
    assert answer.status_code < 500, answer.text
    if refused is None:
        assert answer.status_code == 200, answer.text
        assert "error" not in answer.text
    else:
        assert answer.status_code == 400, answer.text
        assert refused in answer.text


@pytest.mark.parametrize(("options", "refused"), OLLAMA, ids=[str(o) for o, _ in OLLAMA])
def test_ollama(real_server: LiveServer, options: dict[str, Any], refused: str | None) -> None:
    for route, body in (
        ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/api/generate", {"prompt": "Hi"}),
    ):
        for stream in (False, True):
            answer = httpx.post(real_server.url + route, timeout=120, json={
                "model": LLM, **body, "stream": stream,
                "options": {"num_predict": 4, **options}})
            _check(answer, refused)


@pytest.mark.parametrize(("options", "refused"), OPENAI, ids=[str(o) for o, _ in OPENAI])
def test_openai(real_server: LiveServer, options: dict[str, Any], refused: str | None) -> None:
    for route, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi"}),
    ):
        for stream in (False, True):
            answer = httpx.post(real_server.url + route, timeout=120, json={
                "model": LLM, **body, "stream": stream, "max_tokens": 4, **options})
            _check(answer, refused)


@pytest.mark.parametrize(("options", "refused"), ANTHROPIC, ids=[str(o) for o, _ in ANTHROPIC])
def test_anthropic(real_server: LiveServer, options: dict[str, Any], refused: str | None) -> None:
    for stream in (False, True):
        answer = httpx.post(real_server.url + "/v1/messages", timeout=120, json={
            "model": LLM, "max_tokens": 4, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}], **options})
        _check(answer, refused)

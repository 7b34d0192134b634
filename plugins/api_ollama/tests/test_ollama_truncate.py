"""A conversation that outgrew the context loses its oldest turns, as with Ollama."""

from __future__ import annotations

import ollama
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, count_tokens


def long_chat(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: " + "tell me more " * 5})
        messages.append({"role": "assistant", "content": f"answer {i}: " + "here is more " * 5})
    messages.append({"role": "user", "content": "the last question"})
    return messages


def test_the_oldest_turns_are_dropped_to_fit_num_ctx(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    messages = long_chat(20)
    whole = client.chat(model="mock", messages=messages[:3] + messages[-1:], stream=False)
    reply = client.chat(model="mock", messages=messages, options={"num_ctx": 200},
                        stream=False)
    assert reply.done and reply.message.content
    seen = device.counters.prompts[-1]
    assert "terse assistant" in seen and "the last question" in seen  # always kept
    assert "question 0:" not in seen and "question 19:" in seen  # oldest dropped first
    # It fits 200 tokens with a quarter left to answer, and keeps what fits of the rest.
    assert reply.prompt_eval_count == count_tokens(seen)
    assert whole.prompt_eval_count is not None
    assert whole.prompt_eval_count < reply.prompt_eval_count <= 150


def test_truncate_false_refuses_instead(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as refused:
        client._request_raw(  # the client has no truncate argument yet: send it raw
            "POST", "/api/chat",
            json={"model": "mock", "messages": long_chat(100), "stream": False,
                  "options": {"num_ctx": 200}, "truncate": False},
        )
    assert refused.value.status_code == 400
    assert "context" in refused.value.error
    assert device.counters.started == 0


def test_a_conversation_that_fits_reaches_the_model_whole(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    client.chat(model="mock", messages=long_chat(3), stream=False)
    seen = device.counters.prompts[-1]
    assert all(f"question {i}:" in seen for i in range(3))

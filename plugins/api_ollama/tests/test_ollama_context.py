"""``/api/generate``'s ``context``: returned with the final object, and sent back to
continue the exchange (the mock's token ids are the UTF-8 bytes of the text)."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, count_tokens


def text_of(context: object) -> str:
    assert isinstance(context, list) and all(isinstance(i, int) for i in context)
    return bytes(context).decode()


def test_context_is_the_prompt_the_model_read_and_the_answer(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    whole = client.generate(model="mock", prompt="Why is the sky blue?", system="Be brief.")
    assert text_of(whole.context) == device.counters.prompts[-1] + whole.response
    assert device.counters.prompts[-1].startswith("<|system|>Be brief.")
    chunks = list(client.generate(model="mock", prompt="Why is the sky blue?",
                                  system="Be brief.", stream=True))
    assert [c.context is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].context == whole.context


def test_a_context_sent_back_continues_the_exchange(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    client.generate(model="mock", prompt="What is my name?")
    alone = device.counters.prompts[-1]  # the new prompt as the template renders it
    first = client.generate(model="mock", prompt="My name is Ada.")
    earlier = text_of(first.context)
    second = client.generate(model="mock", prompt="What is my name?", context=first.context)
    seen = device.counters.prompts[-1]
    assert seen == earlier + alone
    assert "My name is Ada." in seen and first.response in seen
    assert second.prompt_eval_count == count_tokens(seen)
    assert second.prompt_eval_count is not None and first.prompt_eval_count is not None
    assert second.prompt_eval_count > first.prompt_eval_count + (first.eval_count or 0)
    # The new context holds the whole conversation: it starts with the first one.
    assert second.context is not None and second.context[: len(first.context or [])] == (
        first.context)
    third = client.generate(model="mock", prompt="Thanks.", context=second.context,
                            stream=True)
    assert text_of(list(third)[-1].context).startswith(text_of(second.context))


def test_a_raw_prompt_neither_returns_nor_reads_a_context(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    raw = client.generate(model="mock", prompt="[INST] hi [/INST]", raw=True)
    assert raw.context is None
    client.generate(model="mock", prompt="[INST] hi [/INST]", raw=True, context=[65, 66])
    assert device.counters.prompts[-1] == "[INST] hi [/INST]"


@pytest.mark.parametrize(
    ("context", "says"),
    [([-1, 5], "negative"), ([300], "0 to 255"), ([65] * 100_000, "more than the"),
     (["a"], "context"), ("AB", "context")],
)
def test_a_bad_context_is_400(server: LiveServer, context: object, says: str) -> None:
    body = {"model": "mock", "prompt": "hi", "context": context, "stream": False}
    response = httpx.post(server.url + "/api/generate", content=json.dumps(body))
    assert response.status_code == 400
    assert says in response.json()["error"]

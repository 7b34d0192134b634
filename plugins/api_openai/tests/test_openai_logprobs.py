"""logprobs through the official SDK on the mock: one value per generated token, in
OpenAI's chat and legacy completion shapes, whole and streamed; alternatives
(``top_logprobs``) refused with a 400 that says why. The real model's values are
checked in test_openai_real_cpu.py."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

MODEL = "mock"
HELLO = [{"role": "user", "content": "Hello there"}]


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True)
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert whole.usage is not None and len(entries) == whole.usage.completion_tokens
    assert all(e.logprob <= 0 and e.top_logprobs == [] for e in entries)
    assert "".join(e.token for e in entries) == choice.message.content
    assert all(bytes(e.bytes or []) == e.token.encode() for e in entries)

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HELLO, logprobs=True, stream=True,
        stream_options={"include_usage": True},
    ))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or ()]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    assert chunks[-1].usage is not None and len(streamed) == chunks[-1].usage.completion_tokens
    plain = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon", logprobs=0,
                                      max_tokens=8)
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert whole.usage is not None and len(logprobs.tokens) == whole.usage.completion_tokens
    assert all(value <= 0 for value in logprobs.token_logprobs)
    assert "".join(logprobs.tokens) == whole.choices[0].text
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i]))
                                    for i in range(len(logprobs.tokens))]
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon", logprobs=0,
                                            max_tokens=8, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [lp.token_logprobs for lp in streamed] == [logprobs.token_logprobs]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": HELLO, "logprobs": True, "top_logprobs": 2},
     "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 0, "echo": True}, "logprobs"),
])
def test_alternatives_are_refused(
    http: httpx.Client, expect_error: Callable[..., dict], path: str, body: dict, param: str
) -> None:
    error = expect_error(http.post(path, json={"model": MODEL, **body}), 400, param)
    assert "not supported" in error["message"]

"""``logprobs: true`` through the ollama client: one value per generated token, in
Ollama's ``logprobs`` (with the last chunk when streamed); ``top_logprobs`` above 0 is
refused with a 400 that says why."""

from __future__ import annotations

import ollama
import pytest
from npu_proxy.testing import LiveServer

ASK = [{"role": "user", "content": "Hello there"}]


def test_chat_and_generate_logprobs(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    whole = client.chat(model="mock", messages=ASK, logprobs=True)
    entries = whole.logprobs or []
    assert len(entries) == whole.eval_count
    assert all(e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries) == whole.message.content
    streamed = list(client.chat(model="mock", messages=ASK, logprobs=True, stream=True))
    assert [c.logprobs for c in streamed[:-1]] == [None] * (len(streamed) - 1)
    assert [(e.token, e.logprob) for e in streamed[-1].logprobs or []] == [
        (e.token, e.logprob) for e in entries]
    generated = client.generate(model="mock", prompt="Once upon", logprobs=True)
    assert len(generated.logprobs or []) == generated.eval_count
    assert client.chat(model="mock", messages=ASK).logprobs is None


def test_top_logprobs_are_refused(server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError, match="top_logprobs") as refused:
        ollama.Client(host=server.url).chat(model="mock", messages=ASK, logprobs=True,
                                            top_logprobs=2)
    assert refused.value.status_code == 400

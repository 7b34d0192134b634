"""The official clients against a real server running SmolLM2 and MiniLM on the CPU.

Every count a client sees is checked against the model's own tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from npu_proxy.engine.types import Capability
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, make_app

LLM = "smollm2:135m"
EMBED = "all-minilm"
# Ollama adds repeat_penalty 1.1 when a request sets none; OpenAI clients do not.
GREEDY = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}


def reply_tokens(server: LiveServer, text: str) -> int:
    """Tokens of ``text`` by the model's own tokenizer (no template, no special tokens)."""
    engine = server.ctx.engine
    model = engine.resolve(LLM, Capability.COMPLETION)
    backend = engine.backends["CPU"]
    return server.call(backend.count_text_tokens(model, [text]))[0]  # type: ignore[no-any-return]


def test_ollama_chat_has_real_statistics(real_server: LiveServer) -> None:
    client = ollama.Client(host=real_server.url)
    response = client.chat(model=LLM, messages=[{"role": "user", "content": "Name a colour."}],
                           options=GREEDY)
    text = response.message.content or ""
    assert text.strip()
    assert response.done_reason in ("stop", "length")
    assert response.prompt_eval_count == real_server.call(real_server.ctx.engine.count_tokens(
        _chat_request("Name a colour.")))
    # The generated tokens, re-tokenised, agree with eval_count (within the end token).
    assert abs(response.eval_count - reply_tokens(real_server, text)) <= 1
    assert response.eval_duration > 0 and response.prompt_eval_duration > 0
    assert response.total_duration >= response.eval_duration + response.prompt_eval_duration


def _chat_request(text: str) -> Any:
    from npu_proxy.engine.types import GenerationRequest, Message

    return GenerationRequest(model=LLM, messages=(Message(role="user", content=text),))


def test_greedy_answers_are_stable_across_dialects(real_server: LiveServer) -> None:
    question = [{"role": "user", "content": "What is 2 + 2?"}]
    first = ollama.Client(host=real_server.url).chat(model=LLM, messages=question,
                                                     options=GREEDY).message.content
    oa = openai.OpenAI(base_url=real_server.url + "/v1", api_key="none", max_retries=0)
    second = oa.chat.completions.create(model=LLM, messages=question, temperature=0,
                                        max_tokens=24)
    assert second.choices[0].message.content == first
    assert second.usage is not None and second.usage.completion_tokens > 0


def test_openai_stream_usage_equals_the_counts(real_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens <= 12 and usage.prompt_tokens > 0
    assert abs(usage.completion_tokens - reply_tokens(real_server, text)) <= 1


def test_ollama_chat_drops_the_oldest_turns_to_fit_num_ctx(real_server: LiveServer) -> None:
    messages = [{"role": "system", "content": "Answer in one short sentence."}]
    for i in range(12):
        messages += [{"role": "user", "content": f"Tell me fact number {i} about the sea."},
                     {"role": "assistant", "content": f"Fact {i}: the sea is deep and wide."}]
    messages.append({"role": "user", "content": "What colour is the sea?"})
    client = ollama.Client(host=real_server.url)
    reply = client.chat(model=LLM, messages=messages, stream=False,
                        options={"num_ctx": 256, "num_predict": 8, "temperature": 0})
    assert reply.done and reply.message.content
    # The whole conversation is well over 256 tokens; what ran kept room for the answer.
    assert reply.prompt_eval_count is not None and 0 < reply.prompt_eval_count <= 256 - 8
    with pytest.raises(ollama.ResponseError) as refused:
        client._request_raw("POST", "/api/chat", json={
            "model": LLM, "messages": messages, "stream": False, "truncate": False,
            "options": {"num_ctx": 256}})
    assert refused.value.status_code == 400


def seeded_choices(server: LiveServer) -> list[str]:
    """Two choices of one request at temperature 1, seeds 11 and 12 (checked counts)."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    reply = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Tell me a story."}],
        n=2, seed=11, temperature=1.0, max_tokens=24,
    )
    texts = [c.message.content or "" for c in reply.choices]
    assert reply.usage is not None
    # both choices' tokens, each as the tokenizer counts its text (+-1 per choice)
    counted = sum(reply_tokens(server, text) for text in texts)
    assert abs(reply.usage.completion_tokens - counted) <= 2
    return texts


def test_openai_choices_sample_with_their_own_seeds(real_server: LiveServer) -> None:
    first = seeded_choices(real_server)
    assert all(first)
    assert first[0] != first[1]  # seeds 11 and 12: two samples, not one twice


def test_seeded_samples_repeat_exactly_without_the_prefix_cache(
    ov_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With the prefix cache (the default) a repeat reads the prompt partly from the
    # cache, which moves the logits' last bits: greedy answers never change, a sample at
    # temperature 1 can (as with llama.cpp's prompt cache). Without it, the same seeds
    # give the same samples every time (docs/clients.md).
    monkeypatch.setenv("NPU_PROXY_PREFIX_CACHING", "0")
    with LiveServer(make_app(ov_settings)) as server:
        first = seeded_choices(server)
        assert first[0] != first[1]
        assert seeded_choices(server) == first
        assert seeded_choices(server) == first


def test_anthropic_messages_with_real_usage(real_server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=real_server.url, api_key="none", max_retries=0)
    message = client.messages.create(model=LLM, max_tokens=16,
                                     messages=[{"role": "user", "content": "Hi there!"}])
    assert message.content and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 16
    counted = client.messages.count_tokens(model=LLM,
                                           messages=[{"role": "user", "content": "Hi there!"}])
    assert counted.input_tokens == message.usage.input_tokens


def test_embeddings_through_the_sdk_default_call(real_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="none", max_retries=0)
    result = client.embeddings.create(model=EMBED, input=["a cat", "a kitten", "quantum physics"])
    cat, kitten, physics = (d.embedding for d in result.data)
    assert len(cat) == 384

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b))

    assert cos(cat, kitten) > cos(cat, physics)
    ollama_vectors = ollama.Client(host=real_server.url).embed(model=EMBED, input="a cat")
    assert max(abs(a - b) for a, b in zip(ollama_vectors.embeddings[0], cat, strict=True)) < 1e-5


def test_route_headers_tell_where_it_ran(real_server: LiveServer) -> None:
    response = httpx.post(real_server.url + "/api/generate", json={
        "model": LLM, "prompt": "Hello", "stream": False, "options": GREEDY}, timeout=120)
    assert response.status_code == 200
    assert response.headers["x-npu-proxy-device"] == "CPU"
    assert response.headers["x-npu-proxy-route-reason"] == "preferred_device_absent"
    assert int(response.headers["x-npu-proxy-token-count"]) == response.json()[
        "prompt_eval_count"]


def test_keep_alive_zero_unloads(real_server: LiveServer) -> None:
    client = ollama.Client(host=real_server.url)
    client.generate(model=LLM, prompt="Hi", options={"num_predict": 2}, keep_alive=-1)
    assert LLM in [m.model for m in client.ps().models]
    client.generate(model=LLM, prompt="", keep_alive=0)
    assert LLM not in [m.model for m in client.ps().models]

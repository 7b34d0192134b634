"""Prompts longer than the real model's context (SmolLM2: 8,192 tokens): true counts in
count_tokens and in the context error, and Ollama's default truncate keeping the end."""

from __future__ import annotations

import re

import anthropic
import httpx
import ollama
import openai
import pytest
from npu_proxy.testing import LiveServer

LLM = "smollm2:135m"
NINE_THOUSAND_WORDS = " ".join(f"word{i % 10}" for i in range(9000))


def _count_in(message: str) -> int:
    found = re.search(r"prompt is (\d+) tokens", message)
    assert found, message
    return int(found.group(1))


def test_count_tokens_counts_past_the_context(real_server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=real_server.url, api_key="x", max_retries=0)
    counted = client.messages.count_tokens(
        model=LLM, messages=[{"role": "user", "content": NINE_THOUSAND_WORDS}])
    assert counted.input_tokens > 9000


def test_the_context_error_names_the_true_count(real_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": NINE_THOUSAND_WORDS}])
    assert _count_in(str(refused.value)) > 9000
    answer = httpx.post(real_server.url + "/api/generate", timeout=120, json={
        "model": LLM, "prompt": NINE_THOUSAND_WORDS, "stream": False, "truncate": False})
    assert answer.status_code == 400
    assert _count_in(answer.json()["error"]) > 9000


@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
def test_ollama_keeps_the_end_of_a_long_prompt_and_answers(
    real_server: LiveServer, route: str
) -> None:
    question = NINE_THOUSAND_WORDS + " Now say hello."
    body = ({"messages": [{"role": "user", "content": question}]} if route == "/api/chat"
            else {"prompt": question})
    # A small num_ctx keeps the test quick: the prompt still runs past it many times over.
    answer = httpx.post(real_server.url + route, timeout=300, json={
        "model": LLM, **body, "stream": False,
        "options": {"num_ctx": 512, "num_predict": 8, "temperature": 0}})
    assert answer.status_code == 200, answer.text
    kept = int(answer.headers["X-NPU-Proxy-Token-Count"])
    dropped = int(answer.headers["X-NPU-Proxy-Truncated"])
    assert kept <= 512 - 8 and kept + dropped > 9000
    reply = answer.json()
    assert reply["done"] is True and reply["prompt_eval_count"] <= kept
    assert reply["eval_count"] >= 1
    streamed = ollama.Client(host=real_server.url)
    if route == "/api/chat":
        chunks = list(streamed.chat(model=LLM, messages=body["messages"], stream=True,
                                    options={"num_ctx": 512, "num_predict": 8}))
    else:
        chunks = list(streamed.generate(model=LLM, prompt=question, stream=True,
                                        options={"num_ctx": 512, "num_predict": 8}))
    assert chunks[-1].done

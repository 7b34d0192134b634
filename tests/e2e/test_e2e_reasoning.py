"""Reasoning models in every dialect, through the official clients, on the mock
reasoning model (``mock-think``: it thinks 4, 8 or 16 words at low, medium or high
effort, one token each, then answers): Ollama ``think``, OpenAI ``reasoning_effort``
with ``reasoning_content``, Responses reasoning items and Anthropic thinking blocks,
streamed and whole; and the same refusal for a model that cannot think."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import THINKING_WORDS, MockBackend, MockCounters

THINKER = "mock-think"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("reasoning")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0.001")
        app = make_app(test_settings(tmp), ["mock", "ollama", "openai", "anthropic"])
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def counters(server: LiveServer) -> MockCounters:
    backend: MockBackend = server.ctx.engine.backends["MOCK"]
    return backend.counters


@pytest.fixture(scope="module")
def oai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def claude(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def llama(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_capability_is_shown(server: LiveServer, llama: ollama.Client) -> None:
    assert "thinking" in (llama.show(THINKER).capabilities or [])
    assert "thinking" not in (llama.show("mock").capabilities or [])
    listed = httpx.get(server.url + "/v1/models").json()["data"]
    by_id = {m["id"]: m["capabilities"] for m in listed}
    assert by_id["mock-think:latest"] == ["completion", "tools", "thinking"]
    assert "thinking" not in by_id["mock:latest"]


# --- Ollama ---------------------------------------------------------------------------


@pytest.mark.parametrize(("think", "words"), [
    (True, THINKING_WORDS["medium"]), ("low", THINKING_WORDS["low"]),
    ("medium", THINKING_WORDS["medium"]), ("high", THINKING_WORDS["high"]),
])
def test_ollama_think_levels(llama: ollama.Client, think: bool | str, words: int) -> None:
    whole = llama.chat(model=THINKER, messages=ASK, think=think)  # type: ignore[arg-type]
    assert whole.message.thinking and whole.message.content
    assert len(whole.message.thinking.split()) == words
    chunks = list(llama.chat(model=THINKER, messages=ASK, think=think, stream=True))  # type: ignore[arg-type]
    thinking = [c.message.thinking for c in chunks if c.message.thinking]
    assert len(thinking) == words  # one chunk per reasoning token, before the answer
    first_answer = next(i for i, c in enumerate(chunks) if c.message.content)
    assert all(not c.message.thinking for c in chunks[first_answer:])
    assert "".join(thinking) == whole.message.thinking
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content


def test_ollama_think_false_renders_without_thinking(
    llama: ollama.Client, counters: MockCounters
) -> None:
    reply = llama.chat(model=THINKER, messages=ASK, think=False)
    assert not reply.message.thinking and reply.message.content
    assert counters.prompts[-1].endswith("<|think|>false\n<|assistant|>")


def test_ollama_generate_thinking(llama: ollama.Client) -> None:
    whole = llama.generate(model=THINKER, prompt="Why?", think="high")
    assert whole.thinking and len(whole.thinking.split()) == THINKING_WORDS["high"]
    streamed = list(llama.generate(model=THINKER, prompt="Why?", think="high", stream=True))
    assert "".join(c.thinking or "" for c in streamed) == whole.thinking
    assert "".join(c.response for c in streamed) == whole.response


# --- OpenAI chat ----------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "words"), [
    ("minimal", THINKING_WORDS["low"]), ("low", THINKING_WORDS["low"]),
    ("medium", THINKING_WORDS["medium"]), ("high", THINKING_WORDS["high"]),
])
def test_openai_reasoning_effort_and_content(
    oai: openai.OpenAI, effort: str, words: int
) -> None:
    whole = oai.chat.completions.create(
        model=THINKER, messages=ASK, reasoning_effort=effort  # type: ignore[arg-type]
    )
    message = whole.choices[0].message
    reasoning = message.reasoning_content  # type: ignore[attr-defined]
    assert len(reasoning.split()) == words and message.content
    deltas = list(oai.chat.completions.create(
        model=THINKER, messages=ASK, reasoning_effort=effort, stream=True  # type: ignore[arg-type]
    ))
    streamed = [getattr(c.choices[0].delta, "reasoning_content", None) for c in deltas
                if c.choices]
    assert "".join(r for r in streamed if r) == reasoning
    assert "".join(c.choices[0].delta.content or "" for c in deltas if c.choices) == (
        message.content
    )


def test_openai_reasoning_effort_none_hides_thinking(
    oai: openai.OpenAI, counters: MockCounters
) -> None:
    reply = oai.chat.completions.create(model=THINKER, messages=ASK, reasoning_effort="none")
    assert getattr(reply.choices[0].message, "reasoning_content", None) is None
    assert "<|think|>false" in counters.prompts[-1]
    default = oai.chat.completions.create(model=THINKER, messages=ASK)
    # No effort: the model's own default, which for this model is to think.
    assert len(default.choices[0].message.reasoning_content.split()) == (  # type: ignore[attr-defined]
        THINKING_WORDS["medium"]
    )


# --- Responses ------------------------------------------------------------------------


def test_responses_reasoning_items(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(model=THINKER, input="Why?", reasoning={"effort": "high"})
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.content is not None
    (part,) = reasoning.content
    assert part.type == "reasoning_text"
    assert len(part.text.split()) == THINKING_WORDS["high"]
    assert whole.usage is not None
    assert whole.usage.output_tokens_details.reasoning_tokens == THINKING_WORDS["high"]

    with oai.responses.stream(model=THINKER, input="Why?", reasoning={"effort": "high"}) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.reasoning_text.delta"]
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(deltas) == part.text
    done = types.index("response.reasoning_text.done")
    assert types[done + 1] == "response.output_item.done"
    assert types.index("response.output_text.delta") > done
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == whole.output_text


def test_responses_effort_none_has_no_reasoning_item(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=THINKER, input="Why?", reasoning={"effort": "none"})
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 0


# --- Anthropic ------------------------------------------------------------------------


def test_anthropic_thinking_blocks(claude: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    whole = claude.messages.create(model=THINKER, max_tokens=200, messages=ASK,  # type: ignore[arg-type]
                                   thinking=thinking)  # type: ignore[arg-type]
    block, text = whole.content
    assert block.type == "thinking" and text.type == "text"
    assert len(block.thinking.split()) == THINKING_WORDS["medium"]
    digest = hashlib.sha256(block.thinking.encode()).digest()
    assert block.signature == base64.b64encode(digest).decode()

    with claude.messages.stream(model=THINKER, max_tokens=200, messages=ASK,  # type: ignore[arg-type]
                                thinking=thinking) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert kinds.count("thinking_delta") == THINKING_WORDS["medium"]
    assert kinds.index("signature_delta") == THINKING_WORDS["medium"]  # ends the block
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == block.thinking  # type: ignore[union-attr]
    assert final.content[0].signature == block.signature  # type: ignore[union-attr]
    assert final.content[1].text == text.text  # type: ignore[union-attr]


def test_anthropic_budget_caps_reasoning_tokens(claude: anthropic.Anthropic) -> None:
    capped = claude.messages.create(
        model=THINKER, max_tokens=200, messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 3},
    )
    block = capped.content[0]
    assert block.type == "thinking" and len(block.thinking.split()) == 3


def test_anthropic_without_thinking_asks_the_model_not_to_think(
    claude: anthropic.Anthropic, counters: MockCounters
) -> None:
    reply = claude.messages.create(model=THINKER, max_tokens=200, messages=ASK)  # type: ignore[arg-type]
    assert [block.type for block in reply.content] == ["text"]
    assert "<|think|>false" in counters.prompts[-1]


# --- a model that cannot think: the same refusal everywhere ---------------------------


def test_every_dialect_refuses_thinking_for_a_model_without_it(
    oai: openai.OpenAI, claude: anthropic.Anthropic, llama: ollama.Client
) -> None:
    expected = '"mock:latest" does not support thinking'
    with pytest.raises(ollama.ResponseError) as from_ollama:
        llama.chat(model="mock", messages=ASK, think="high")
    assert from_ollama.value.status_code == 400 and expected in str(from_ollama.value)
    with pytest.raises(openai.BadRequestError, match=expected):
        oai.chat.completions.create(model="mock", messages=ASK, reasoning_effort="low")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match=expected):
        oai.responses.create(model="mock", input="Why?", reasoning={"effort": "low"})
    with pytest.raises(anthropic.BadRequestError, match=expected):
        claude.messages.create(model="mock", max_tokens=20, messages=ASK,  # type: ignore[arg-type]
                               thinking={"type": "enabled", "budget_tokens": 1024})
    # Turning thinking off is fine for any model.
    assert llama.chat(model="mock", messages=ASK, think=False).message.content
    assert oai.responses.create(model="mock", input="Hi", reasoning={"effort": "none"}).output_text

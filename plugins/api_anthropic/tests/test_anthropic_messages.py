"""Non-streaming /v1/messages and count_tokens through the official anthropic SDK."""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount, TextBlock, ToolUseBlock
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockCounters, count_tokens

MODEL = "claude-sonnet-4-6"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
    },
}


def ask(client: anthropic.Anthropic, text: str = "Hello", **kwargs: Any) -> Message:
    kwargs.setdefault("max_tokens", 64)
    return client.messages.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )


def test_reply_parses_into_sdk_types_with_real_usage(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    message = ask(client, "Tell me something.")
    assert isinstance(message, Message)
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL  # the name the client asked for
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    [block] = message.content
    assert isinstance(block, TextBlock) and block.text
    # The counts are the device's: the pieces it emitted and its tokens of the prompt.
    assert message.usage.output_tokens == counters.tokens_emitted
    assert message.usage.input_tokens == count_tokens(counters.prompts[-1])
    assert counters.finished == 1


def test_inference_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.headers["x-npu-proxy-device"] == "MOCK"
    assert raw.headers["x-npu-proxy-route-reason"]
    assert int(raw.headers["x-npu-proxy-token-count"]) == raw.parse().usage.input_tokens
    assert raw.headers["x-npu-proxy-model"] == "mock:latest"


def test_max_tokens_gives_max_tokens_stop(client: anthropic.Anthropic) -> None:
    message = ask(client, max_tokens=3)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stop_sequence_cuts_the_reply(client: anthropic.Anthropic) -> None:
    full = ask(client, "Same prompt")
    text = full.content[0].text  # type: ignore[union-attr]
    stop = text.split()[3]
    cut = ask(client, "Same prompt", stop_sequences=[stop])
    shown = cut.content[0].text if cut.content else ""  # type: ignore[union-attr]
    assert stop not in shown
    assert text.startswith(shown)
    assert cut.usage.output_tokens < full.usage.output_tokens
    # The mock drops the stop string from its output, and the engine does not say
    # which one matched, so the reply cannot name it (see the plugin README).
    assert cut.stop_reason in ("stop_sequence", "end_turn")


def test_system_prompt_blocks_and_sampling_reach_the_model(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    client.messages.create(
        model="mock-think",  # thinking is enabled below: a reasoning model
        max_tokens=16,
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in English."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "First"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Earlier answer"}]},
            {"role": "user", "content": "Second"},
        ],
        metadata={"user_id": "someone"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        # Newer SDKs dropped these arguments; older clients still send them.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 40},
    )
    prompt = counters.prompts[-1]
    assert "<|system|>You are terse.\n\nAnswer in English." in prompt
    assert "<|assistant|>Earlier answer" in prompt and "hmm" not in prompt
    assert prompt.index("First") < prompt.index("Earlier answer") < prompt.index("Second")


def test_structured_output_follows_the_schema(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    message = ask(client, "Who?", output_config={"format": {"type": "json_schema",
                                                           "schema": schema}})
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    assert json.loads(text) == {"name": "mock", "age": 42}


def test_system_role_inside_messages_is_tolerated(
    server: LiveServer, counters: MockCounters
) -> None:
    response = httpx.post(server.url + "/v1/messages", json={
        "model": MODEL, "max_tokens": 8,
        "messages": [{"role": "system", "content": "Be kind."},
                     {"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    assert "<|system|>Be kind." in counters.prompts[-1]


def test_tool_use_round_trip(client: anthropic.Anthropic, counters: MockCounters) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                   messages=[question])  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert isinstance(call, ToolUseBlock)
    assert call.name == "get_weather"
    assert call.input == {"city": "mock", "unit": "c"}  # built from input_schema

    second = client.messages.create(
        model=MODEL, max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            question,  # type: ignore[list-item]
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},  # type: ignore[misc]
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id,
                 "content": [{"type": "text", "text": "18 degrees, sunny"}]}]},
        ],
    )
    # The mock answers a tool result in text, as a model would.
    assert second.stop_reason == "end_turn"
    assert isinstance(second.content[0], TextBlock)
    assert counters.prompts[-1].endswith("<|tool|>18 degrees, sunny\n<|assistant|>")


def test_text_after_tool_results_follows_them(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    client.messages.create(
        model=MODEL, max_tokens=8, tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Rome and Oslo?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather",
                 "input": {"city": "Rome", "unit": "c"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_weather",
                 "input": {"city": "Oslo", "unit": "c"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "25"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "3"},
                {"type": "text", "text": "Which is warmer?"}]},
        ],
    )
    prompt = counters.prompts[-1]
    assert prompt.index("<|assistant|>Checking.") < prompt.index("<|tool|>25")
    assert prompt.index("<|tool|>25") < prompt.index("<|tool|>3")
    assert prompt.index("<|tool|>3") < prompt.index("<|user|>Which is warmer?")


def test_tool_result_error_and_string_content(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    client.messages.create(
        model=MODEL, max_tokens=8, tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo", "unit": "c"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "city unknown",
                 "is_error": True}]},
        ],
    )
    assert counters.prompts[-1].endswith("<|tool|>Error: city unknown\n<|assistant|>")


@pytest.mark.parametrize(
    ("choice", "tool"),
    [({"type": "any"}, "get_weather"), ({"type": "tool", "name": "get_time"}, "get_time")],
)
def test_tool_choice_forces_a_call(
    client: anthropic.Anthropic, choice: dict[str, str], tool: str
) -> None:
    clock = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    message = ask(client, "Hi", tools=[WEATHER, clock], tool_choice=choice)
    assert message.stop_reason == "tool_use"
    assert [b.name for b in message.content if isinstance(b, ToolUseBlock)] == [tool]


def test_tool_choice_none_answers_in_text(client: anthropic.Anthropic) -> None:
    message = ask(client, "Hi", tools=[WEATHER], tool_choice={"type": "none"})
    assert message.stop_reason == "end_turn"
    assert all(isinstance(b, TextBlock) for b in message.content)


async def test_async_client(server: LiveServer, counters: MockCounters) -> None:
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0)
    message = await client.messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Async hello"}]
    )
    assert isinstance(message, Message)
    assert message.usage.output_tokens == counters.tokens_emitted
    count = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Async hello"}]
    )
    assert count.input_tokens == message.usage.input_tokens


def test_count_tokens_matches_the_generation(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    params: dict[str, Any] = {
        "model": MODEL,
        "system": "You are a helpful assistant.",
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "How many tokens is this?"}],
    }
    count = client.messages.count_tokens(**params)
    assert isinstance(count, MessageTokensCount)
    assert count.input_tokens > 0
    assert counters.started == 0  # counting never reaches the device
    message = client.messages.create(max_tokens=8, **params)
    assert count.input_tokens == message.usage.input_tokens


def test_bearer_token_like_claude_code(server: LiveServer) -> None:
    # ANTHROPIC_AUTH_TOKEN makes clients send "Authorization: Bearer ...", no x-api-key.
    client = anthropic.Anthropic(base_url=server.url, auth_token="local-token", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        extra_query={"beta": "true"},
    )
    assert raw.http_request.headers["authorization"] == "Bearer local-token"
    assert "x-api-key" not in raw.http_request.headers
    assert raw.http_request.url.params["beta"] == "true"
    assert raw.parse().content


def test_local_model_names_work_directly(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="mock", max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.model == "mock"
    assert message.usage.output_tokens > 0


def test_image_data_is_decoded_before_the_capability_check(
    client: anthropic.Anthropic,
) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=8,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": png}},
                {"type": "text", "text": "What is this?"}]}],
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "text-only" in caught.value.body["error"]["message"]  # type: ignore[index]

"""Tool calls through the official SDK: whole and streamed, choices, and a full round trip."""

from __future__ import annotations

import json

import openai
from npu_proxy_mock.backend import MockCounters

CHAT_MODEL = "mock"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def test_round_trip_call_then_answer(client: openai.OpenAI, counters: MockCounters) -> None:
    first = client.chat.completions.create(model=CHAT_MODEL, messages=ASK, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 42}

    second = client.chat.completions.create(
        model=CHAT_MODEL,
        tools=[WEATHER],
        messages=[
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
        ],
    )
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert answer.message.content
    assert answer.message.tool_calls is None
    # The model saw its own call and the tool's answer.
    assert "<|tool|>Sunny, 21 degrees." in counters.prompts[-1]


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, tools=[WEATHER], stream=True)
    )
    assert len({c.id for c in chunks}) == 1
    calls = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    (delta,) = calls
    assert delta.index == 0
    assert delta.id
    assert delta.type == "function"
    assert delta.function is not None and delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments or "") == {"city": "mock", "days": 42}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_helper_collects_tool_calls(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=CHAT_MODEL, messages=ASK, tools=[WEATHER]) as s:
        events = [e.type for e in s]
        final = s.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock", "days": 42}


def test_tool_choice_named_none_and_required(client: openai.OpenAI) -> None:
    named = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = named.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "mock"}

    none = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content
    assert none.choices[0].finish_reason == "stop"

    required = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, tools=[WEATHER], tool_choice="required"
    )
    assert required.choices[0].finish_reason == "tool_calls"

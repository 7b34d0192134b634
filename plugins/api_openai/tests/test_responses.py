"""The Responses API through the official SDK over real HTTP: whole and streamed
responses, a function tool round trip, structured output, stored conversations and
every refusal in OpenAI's error shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, MockCounters
from npu_proxy_openai.responses_store import ResponseStore, StoredResponse

MODEL = "mock"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def test_a_string_input_gets_a_whole_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", metadata={"k": "v"})
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.metadata == {"k": "v"}
    (message,) = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    (part,) = message.content
    assert part.type == "output_text"
    assert response.output_text == part.text and part.text
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0
    assert 12 <= usage.output_tokens <= 23  # the mock's reply length, token by token
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0  # the mock keeps no prefix cache


def test_instructions_and_message_items_reach_the_prompt(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    client.responses.create(
        model=MODEL,
        instructions="Answer briefly.",
        input=[
            {"role": "developer", "content": "Be kind."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Hi"},
                         {"type": "input_text", "text": "there"}]},
        ],
    )
    assert counters.prompts[-1] == (
        "<|system|>Answer briefly.\n<|system|>Be kind.\n<|user|>Hi\nthere\n<|assistant|>"
    )


def test_streamed_response_follows_the_typed_event_sequence(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="Tell me a story.")
    with client.responses.stream(model=MODEL, input="Tell me a story.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == final.usage.output_tokens  # type: ignore[union-attr]
    assert "".join(deltas) == final.output_text == whole.output_text
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]
    assert final.status == "completed"
    assert final.id == events[0].response.id  # type: ignore[union-attr]


async def test_async_client_streams_with_create(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.responses.create(model=MODEL, input="Hello", stream=True)
    text = ""
    completed = None
    async for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
    assert completed is not None
    assert completed.output_text == text and text


def test_function_tool_round_trip(client: openai.OpenAI, counters: MockCounters) -> None:
    asked = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = client.responses.create(model=MODEL, input=asked, tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.call_id and call.id and call.id != call.call_id
    assert json.loads(call.arguments) == {"city": "mock", "days": 42}
    assert first.tools[0].name == "get_weather"

    second = client.responses.create(
        model=MODEL,
        tools=[WEATHER],
        input=[
            *asked,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"},
        ],
    )
    (message,) = second.output
    assert message.type == "message" and second.output_text
    assert "<|tool|>Sunny, 21C" in counters.prompts[-1]


def test_streamed_function_call_sends_its_arguments(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required"
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2]
    assert added.item.type == "function_call" and added.item.arguments == ""  # type: ignore[union-attr]
    done = events[4]
    assert json.loads(done.arguments) == {"city": "mock", "days": 42}  # type: ignore[union-attr]
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == done.arguments  # type: ignore[union-attr]


def test_named_tool_choice_and_no_tools(client: openai.OpenAI) -> None:
    other = {**WEATHER, "name": "get_time"}
    named = client.responses.create(
        model=MODEL, input="Time?", tools=[WEATHER, other],
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert [item.name for item in named.output] == ["get_time"]  # type: ignore[union-attr]
    plain = client.responses.create(model=MODEL, input="Hi", tools=[WEATHER], tool_choice="none")
    assert [item.type for item in plain.output] == ["message"]


def test_namespace_tools_are_offered_and_named_in_calls(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    namespace = {"type": "namespace", "name": "weather", "description": "Weather tools.",
                 "tools": [{k: v for k, v in WEATHER.items() if k != "strict"}]}
    response = client.responses.create(
        model=MODEL, input="Weather?", tools=[namespace, {**WEATHER, "name": "other"}]  # type: ignore[list-item]
    )
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.namespace == "weather"  # type: ignore[union-attr]
    assert '<|tools|>["get_weather", "other"]' in counters.prompts[-1]


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Rate this.",
        text={"format": {"type": "json_schema", "name": "rating", "schema": ANSWER_SCHEMA,
                         "strict": True}},
    )
    assert json.loads(response.output_text) == {"answer": "mock", "score": 42}
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    loose = client.responses.create(
        model=MODEL, input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(loose.output_text), dict)


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Go on.", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    stream = client.responses.create(model=MODEL, input="Go on.", max_output_tokens=3,
                                     stream=True)
    assert [e.type for e in stream][-1] == "response.incomplete"


def test_a_conversation_continues_by_previous_response_id(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    first = client.responses.create(model=MODEL, instructions="Be brief.", input="My name is Ada.")
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="What is my name?",
        instructions="Be kind.",
    )
    # The first turn's instructions are not carried over; its input and output are.
    assert counters.prompts[-1] == (
        f"<|system|>Be kind.\n<|user|>My name is Ada.\n<|assistant|>{first.output_text}\n"
        "<|user|>What is my name?\n<|assistant|>"
    )
    assert second.previous_response_id == first.id
    with client.responses.stream(
        model=MODEL, previous_response_id=second.id, input="And again?"
    ) as stream:
        third = stream.get_final_response()
    assert f"<|assistant|>{second.output_text}\n<|user|>And again?" in counters.prompts[-1]
    assert client.responses.retrieve(third.id).output_text == third.output_text

    deleted = client.responses.delete(first.id)
    assert deleted is None  # the SDK returns nothing for a successful delete
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, previous_response_id=first.id, input="Hi")
    assert refused.value.param == "previous_response_id"  # type: ignore[attr-defined]


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError, match="not stored"):
        client.responses.create(model=MODEL, previous_response_id=response.id, input="Hi")


def test_a_server_without_a_store_says_so(
    tmp_path: Path, fast_mock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_RESPONSES_STORE_SIZE", "0")
    with LiveServer(make_app(test_settings(tmp_path), plugins=["mock", "openai"])) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        response = client.responses.create(model=MODEL, input="Hi")
        assert response.store is False
        with pytest.raises(openai.BadRequestError, match="NPU_PROXY_RESPONSES_STORE_SIZE=0"):
            client.responses.create(model=MODEL, previous_response_id=response.id, input="Hi")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"background": True}, "background", "background responses are not supported"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
        ({"tools": [{"type": "namespace", "name": "n",
                     "tools": [{"type": "custom", "name": "c"}]}]},
         "tools[0].tools[0].type", "'custom'"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
         "tool_choice", "'nope'"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice", "'file_search'"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "'item_reference'"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0].type", "'input_file'"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id",
         "call_id"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
         "input[0].arguments", "JSON object"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
         "schema"),
        ({"input": None}, "input", "required"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ],
)
def test_refusals_in_openai_shape(
    http: httpx.Client, expect_error: Callable[..., dict], body: dict, param: str, words: str
) -> None:
    payload = {"model": MODEL, "input": "Hi", **body}
    error = expect_error(http.post("/v1/responses", json=payload), 400, param)
    assert words in error["message"]


def test_unknown_model_and_unknown_id_are_404(
    http: httpx.Client, expect_error: Callable[..., dict]
) -> None:
    error = expect_error(http.post("/v1/responses", json={"model": "nope", "input": "x"}), 404)
    assert error["code"] == "model_not_found"
    error = expect_error(http.get("/v1/responses/resp_nope"), 404)
    assert "resp_nope" in error["message"]
    expect_error(http.delete("/v1/responses/resp_nope"), 404)


def test_device_failure_mid_stream_fails_the_response(
    server_with: Callable[..., LiveServer],
) -> None:
    with server_with(MockBackend(fail_after=2)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        events = list(client.responses.create(model=MODEL, input="Story", stream=True))
    types = [event.type for event in events]
    assert types.count("response.output_text.delta") == 2
    assert types[-2:] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_output_text_logprobs_when_included(client: openai.OpenAI) -> None:
    include = ["message.output_text.logprobs"]
    whole = client.responses.create(model=MODEL, input="Hello", include=include)  # type: ignore[list-item]
    (part,) = whole.output[0].content  # type: ignore[union-attr]
    assert whole.usage is not None and len(part.logprobs) == whole.usage.output_tokens  # type: ignore[union-attr]
    assert all(entry.logprob <= 0 for entry in part.logprobs)  # type: ignore[union-attr]
    assert "".join(entry.token for entry in part.logprobs) == part.text  # type: ignore[union-attr]
    events = list(client.responses.create(model=MODEL, input="Hello", include=include,  # type: ignore[list-item]
                                          stream=True))
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.logprob for lp in done.logprobs] == [lp.logprob for lp in part.logprobs]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.responses.create(model=MODEL, input="Hello", include=include, top_logprobs=2)  # type: ignore[list-item]


def test_store_bounds_count_and_age() -> None:
    now = [0.0]
    store = ResponseStore(max_entries=2, max_age=10, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        store.put(name, StoredResponse({"id": name}, ()))
    assert store.get("a") is None  # the oldest went when the third arrived
    assert [store.get(n).body["id"] for n in ("b", "c")] == ["b", "c"]  # type: ignore[union-attr]
    now[0] = 10.0
    assert store.get("b") is None and len(store) == 0  # both reached the age limit
    off = ResponseStore(max_entries=0, max_age=10)
    off.put("a", StoredResponse({}, ()))
    assert not off.enabled and off.get("a") is None

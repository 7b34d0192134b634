"""Chat completions through the official SDK: whole replies, streams, options, formats."""

from __future__ import annotations

import json

import openai
import pydantic
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockCounters
from openai.types.chat import ChatCompletion, ChatCompletionChunk

CHAT_MODEL = "mock"
HELLO = [{"role": "user", "content": "Say hello."}]


def test_reply_parses_into_sdk_types_with_real_usage(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HELLO)
    reply = raw.parse()
    assert isinstance(reply, ChatCompletion)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == CHAT_MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    # The mock counts words and punctuation: the reply's counts are the generation's own.
    assert reply.usage.completion_tokens == len(choice.message.content.split())
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert counters.finished == 1
    assert raw.headers["x-npu-proxy-device"] == "MOCK"
    assert raw.headers["x-npu-proxy-token-count"] == str(reply.usage.prompt_tokens)
    assert raw.headers["x-npu-proxy-route-reason"]


def test_roles_and_content_parts_reach_the_model(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First part."},
                    {"type": "text", "text": "Second part."},
                ],
            },
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Go on."},
        ],
    )
    prompt = counters.prompts[-1]
    assert "<|system|>Be brief." in prompt  # developer is a system message
    assert "<|system|>Be kind." in prompt
    assert "<|user|>First part.\nSecond part." in prompt
    assert "<|assistant|>Noted." in prompt
    assert "<|user|>Go on." in prompt


def test_stream_shares_one_id_and_matches_the_whole_reply(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content  # the mock is deterministic
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_one_chunk_with_the_final_counts(
    client: openai.OpenAI, server: LiveServer
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-npu-proxy-device"] == "MOCK"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    *content, last = events
    assert last["choices"] == []
    assert all(e["usage"] is None for e in content)
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    assert whole.usage is not None
    assert last["usage"] == whole.usage.model_dump(exclude_none=True)
    streamed_tokens = sum(1 for e in content if e["choices"][0]["delta"].get("content"))
    assert last["usage"]["completion_tokens"] == streamed_tokens


def test_stream_helper_accumulates_the_completion(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=CHAT_MODEL, messages=HELLO, stream_options={"include_usage": True}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta" and e.delta]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == len(deltas)


async def test_async_client_streams_and_replies(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    whole = await aclient.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage


def test_max_tokens_and_max_completion_tokens_cut_the_reply(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, **limit)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 3
    # The newer parameter wins when a client sends both.
    both = client.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, max_tokens=2, max_completion_tokens=4
    )
    assert both.usage is not None and both.usage.completion_tokens == 4


def test_stop_strings_end_the_reply(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    words = (full.choices[0].message.content or "").split()
    stop_word = words[2]
    for stop in (stop_word, [stop_word, "never-appears"]):
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, stop=stop)
        text = reply.choices[0].message.content or ""
        assert stop_word not in text
        assert reply.choices[0].finish_reason == "stop"
        assert text.split() == words[: words.index(stop_word)]


def test_sampling_and_cloud_only_fields_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=HELLO,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        n=1,
        user="someone",
        metadata={"team": "x"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        logprobs=True,
        extra_body={"top_k": 20, "min_p": 0.05},
    )
    assert reply.choices[0].message.content
    # logprobs are honoured now: one value per generated token (top_logprobs is a 400,
    # see test_openai_logprobs.py).
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert reply.usage is not None and len(logprobs.content) == reply.usage.completion_tokens


class Weather(pydantic.BaseModel):
    city: str
    degrees: int
    sunny: bool


def test_parse_with_a_pydantic_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=CHAT_MODEL, messages=HELLO, response_format=Weather
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    assert parsed == Weather(city="mock", degrees=42, sunny=True)


def test_json_object_mode_returns_json(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    text = client.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, response_format={"type": "text"}
    )
    assert text.choices[0].message.content
    assert not (text.choices[0].message.content or "").startswith("{")

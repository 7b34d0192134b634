"""Streaming /v1/messages: event order, the SDK's stream helpers, pings, errors, cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import TextBlock, ToolUseBlock
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, MockCounters, count_tokens

MODEL = "claude-opus-4-6"
TOOL = {"name": "read_file", "description": "Read a file.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                         "required": ["path"]}}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Stream please"}], **extra}


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; checks that each data's type matches its event name."""
    events = []
    for chunk in response.text.split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def test_text_event_order(server: LiveServer, counters: MockCounters) -> None:
    response = httpx.post(server.url + "/v1/messages?beta=true", json=body(),
                          headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-npu-proxy-device"] == "MOCK"
    events = sse_events(response)
    names = [name for name, _ in events if name != "ping"]
    deltas = names.count("content_block_delta")
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * deltas,
                     "content_block_stop", "message_delta", "message_stop"]
    assert events[1][0] == "ping"  # right after message_start, as the real API does
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == count_tokens(counters.prompts[-1])
    assert start["usage"]["output_tokens"] == 0
    final = next(data for name, data in events if name == "message_delta")
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == counters.tokens_emitted == deltas


def test_stream_helper_text_and_final_message(
    client: anthropic.Anthropic, counters: MockCounters
) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    [block] = final.content
    assert isinstance(block, TextBlock) and block.text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == counters.tokens_emitted
    assert final.usage.input_tokens == count_tokens(counters.prompts[-1])


def test_stream_tool_use_with_input_json_delta(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, tools=[TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Open the readme"}],
    ) as stream:
        kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None))
                 for event in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert isinstance(call, ToolUseBlock)
    assert call.name == "read_file" and call.input == {"path": "mock"}


def test_stream_max_tokens(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 2


async def test_async_stream(server: LiveServer, counters: MockCounters) -> None:
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0)
    async with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Async"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == counters.tokens_emitted


def test_raw_stream_events_parse(client: anthropic.Anthropic) -> None:
    stream = client.messages.create(
        model=MODEL, max_tokens=64, stream=True,
        messages=[{"role": "user", "content": "Raw"}],
    )
    types = [event.type for event in stream]
    assert types[0] == "message_start" and types[-1] == "message_stop"


def test_pings_while_the_device_is_slow(
    server_with: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_PING_INTERVAL", "0.01")
    with server_with(MockBackend("NPU", token_delay=0.2)) as server:
        response = httpx.post(server.url + "/v1/messages", json=body(max_tokens=3))
    names = [name for name, _ in sse_events(response)]
    # Each token takes 20 ping intervals; pings fill the silence without disturbing it.
    assert names.count("ping") > 3
    assert [n for n in names if n != "ping"][-2:] == ["message_delta", "message_stop"]


def test_failure_mid_stream_ends_with_an_error_event(
    server_with: Callable[..., LiveServer],
) -> None:
    with server_with(MockBackend("NPU", token_delay=0.001, fail_after=2)) as server:
        response = httpx.post(server.url + "/v1/messages", json=body())
        client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            stream.get_final_message()
        assert server.ctx.engine.queues["NPU"].in_flight == 0
    assert response.status_code == 200
    name, data = sse_events(response)[-1]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    assert "traceback" not in data["error"]["message"].lower()
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_disconnect_mid_stream_cancels_the_generation(
    server_with: Callable[..., LiveServer], wait_for: Callable[..., None]
) -> None:
    backend = MockBackend("NPU", token_delay=0.05)
    with server_with(backend) as server, httpx.Client(base_url=server.url) as http:
        with http.stream("POST", "/v1/messages", json=body()) as response:
            for line in response.iter_lines():
                if line == "event: content_block_delta":
                    break  # the client goes away after the first token
        wait_for(lambda: backend.counters.active == 0, "the generation to stop")
        wait_for(lambda: server.ctx.engine.queues["NPU"].in_flight == 0, "the slot to free")
    assert backend.counters.started == 1
    assert backend.counters.cancelled == 1
    assert backend.counters.finished == 0


def test_disconnect_during_a_non_streaming_request_cancels_it(
    server_with: Callable[..., LiveServer], wait_for: Callable[..., None]
) -> None:
    backend = MockBackend("NPU", token_delay=0.5)  # 12+ tokens: several seconds
    with server_with(backend) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/messages", json={**body(), "stream": False},
                       timeout=httpx.Timeout(5.0, read=1.0))
        wait_for(lambda: backend.counters.active == 0, "the generation to stop")
    assert backend.counters.cancelled == 1
    assert backend.counters.finished == 0

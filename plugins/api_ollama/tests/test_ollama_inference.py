"""Generate, chat, tools and embeddings through the official ``ollama`` client."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, count_tokens

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def test_generate_whole_reports_the_devices_counts(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    reply = client.generate(model="mock", prompt="Why is the sky blue?", stream=False)
    assert isinstance(reply, ollama.GenerateResponse)
    assert reply.done and reply.done_reason == "stop"
    assert reply.model == "mock"
    assert reply.response
    assert reply.eval_count == device.counters.tokens_emitted
    assert reply.prompt_eval_count == count_tokens(device.counters.prompts[-1])
    assert "Why is the sky blue?" in device.counters.prompts[-1]
    assert reply.total_duration and reply.total_duration > 0
    assert reply.eval_duration and reply.eval_duration > 0
    assert reply.prompt_eval_duration and reply.prompt_eval_duration > 0
    assert reply.load_duration is not None
    assert reply.created_at and reply.created_at.endswith("Z")


def test_generate_stream_matches_the_whole_answer(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    whole = client.generate(model="mock:latest", prompt="Tell me a story", stream=False)
    before = device.counters.tokens_emitted
    chunks = list(client.generate(model="mock:latest", prompt="Tell me a story", stream=True))
    assert all(isinstance(c, ollama.GenerateResponse) for c in chunks)
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.response or "" for c in chunks) == whole.response
    final = chunks[-1]
    assert final.eval_count == device.counters.tokens_emitted - before == len(chunks) - 1
    assert final.prompt_eval_count == whole.prompt_eval_count
    assert final.done_reason == "stop"


def test_stream_is_ndjson_with_route_headers(server: LiveServer) -> None:
    body = {"model": "mock", "prompt": "hello"}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.headers["x-npu-proxy-device"] == "MOCK"
        assert response.headers["x-npu-proxy-route-reason"]
        assert int(response.headers["x-npu-proxy-token-count"]) > 0
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert all(set(line) >= {"model", "created_at", "response", "done"} for line in lines)


def test_num_predict_and_stop_reach_the_device(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    short = client.generate(model="mock", prompt="count", options={"num_predict": 3}, stream=False)
    assert short.done_reason == "length" and short.eval_count == 3
    free = client.generate(model="mock", prompt="count", options={"num_predict": -1}, stream=False)
    assert free.done_reason == "stop" and free.eval_count and free.eval_count > 3
    words = (free.response or "").split()
    stopped = client.generate(
        model="mock", prompt="count", options={"stop": [" " + words[2]]}, stream=False
    )
    assert stopped.done_reason == "stop"
    assert stopped.response == " ".join(words[:2])


def test_raw_prompt_reaches_the_model_untouched(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    client.generate(model="mock", prompt="<|user|>raw text", raw=True, system="ignored")
    assert device.counters.prompts[-1] == "<|user|>raw text"
    client.generate(model="mock", prompt="templated", system="Be brief.")
    assert device.counters.prompts[-1].startswith("<|system|>Be brief.\n<|user|>templated")


def test_format_schema_gives_matching_json(server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    client = ollama.Client(host=server.url)
    reply = client.chat(model="mock", messages=[{"role": "user", "content": "age?"}], format=schema)
    assert json.loads(reply.message.content or "") == {"age": 42}
    reply = client.generate(model="mock", prompt="json please", format="json")
    assert isinstance(json.loads(reply.response or ""), dict)


async def test_async_chat_stream_and_whole(server: LiveServer, device: MockBackend) -> None:
    client = ollama.AsyncClient(host=server.url)
    messages = [{"role": "user", "content": "Hi there"}]
    whole = await client.chat(model="mock", messages=messages)
    assert isinstance(whole, ollama.ChatResponse)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == device.counters.tokens_emitted
    parts = [part async for part in await client.chat(model="mock", messages=messages, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count
    assert parts[-1].prompt_eval_count == count_tokens(device.counters.prompts[-1])


def test_tool_call_whole_and_streamed(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat(model="mock", messages=messages, tools=[WEATHER_TOOL])
    calls = reply.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "mock", "days": 42}
    assert reply.done_reason == "stop"

    chunks = list(client.chat(model="mock", messages=messages, tools=[WEATHER_TOOL], stream=True))
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1
    assert with_calls[0].message.tool_calls[0].function.arguments == {"city": "mock", "days": 42}

    # The tool's answer goes back with tool_name; the model then replies in text.
    follow_up = [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ]
    answer = client.chat(model="mock", messages=follow_up, tools=[WEATHER_TOOL])
    assert answer.message.content and not answer.message.tool_calls
    assert "<|tool|>18 degrees" in device.counters.prompts[-1]


def test_tools_to_a_model_without_tools_is_400(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(
            model="mock-embed", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]
        )
    assert caught.value.status_code == 400


def test_images_to_a_text_only_model_is_400(server: LiveServer, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    image = b"\x89PNG\r\n\x1a\nfake"
    for call in (
        lambda: client.generate(model="mock", prompt="what is this?", images=[image]),
        lambda: client.chat(
            model="mock", messages=[{"role": "user", "content": "what?", "images": [image]}]
        ),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400
        assert "image" in caught.value.error
    assert device.counters.started == 0


def test_think_on_a_model_without_thinking_is_400(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="mock", messages=[{"role": "user", "content": "x"}], think=True)
    assert caught.value.status_code == 400
    assert "thinking" in caught.value.error


def test_embed_and_legacy_embeddings(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    reply = client.embed(model="mock-embed", input=["first text", "second one here"])
    assert isinstance(reply, ollama.EmbedResponse)
    assert len(reply.embeddings) == 2 and all(len(v) == 384 for v in reply.embeddings)
    assert reply.prompt_eval_count == count_tokens("first text") + count_tokens("second one here")
    assert reply.total_duration and reply.total_duration > 0
    one = client.embed(model="mock-embed:latest", input="first text", dimensions=64)
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 64
    legacy = client.embeddings(model="mock-embed", prompt="first text")
    assert isinstance(legacy, ollama.EmbeddingsResponse)
    assert list(legacy.embedding) == pytest.approx(list(reply.embeddings[0]))
    response = httpx.post(f"{server.url}/api/embed", json={"model": "mock-embed", "input": "x"})
    assert response.headers["x-npu-proxy-device"] == "MOCK"


def test_embed_without_a_model_uses_the_default_embedding_model(
    start: Callable[..., LiveServer],
) -> None:
    server = start(embedding_model="mock-embed")  # NPU_PROXY_EMBEDDING_MODEL
    url = server.url
    named = httpx.post(f"{url}/api/embed", json={"model": "mock-embed", "input": ["a text"]})
    default = httpx.post(f"{url}/api/embed", json={"input": ["a text"]})
    assert default.status_code == 200, default.text
    assert default.json()["model"] == "mock-embed:latest"
    assert default.json()["embeddings"] == named.json()["embeddings"]
    legacy = httpx.post(f"{url}/api/embeddings", json={"prompt": "a text"})
    assert legacy.json()["embedding"] == pytest.approx(named.json()["embeddings"][0])
    loaded = httpx.post(f"{url}/api/embed", json={})  # no input: load the default only
    assert loaded.json() == {"model": "mock-embed:latest", "embeddings": []}


def test_embed_without_a_model_names_a_missing_default(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/api/embed", json={"input": "x"})
    assert response.status_code == 404
    assert "all-minilm" in response.json()["error"]  # the default NPU_PROXY_EMBEDDING_MODEL


def test_embed_with_a_chat_model_is_400(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="mock", input="x")
    assert caught.value.status_code == 400


def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    loaded = client.generate(model="mock", prompt="")
    assert loaded.done and loaded.done_reason == "load"
    assert [m.model for m in client.ps().models] == ["mock:latest"]
    unloaded = client.chat(model="mock", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []
    assert device.counters.unloads == 1
    # Streaming clients get the same single object as their only chunk.
    (chunk,) = list(client.generate(model="mock", prompt="", stream=True))
    assert chunk.done and chunk.done_reason == "load"
    assert device.counters.started == 0


def test_keep_alive_zero_after_a_generation_unloads(
    server: LiveServer, device: MockBackend, wait_for: Callable[[Callable[[], bool], str], None]
) -> None:
    client = ollama.Client(host=server.url)
    client.generate(model="mock", prompt="hello", keep_alive="10m")
    running = client.ps().models
    assert len(running) == 1 and running[0].context_length == 8192
    assert running[0].expires_at is not None and running[0].size
    client.generate(model="mock", prompt="hello", keep_alive=0)
    wait_for(lambda: client.ps().models == [], "the model to unload")
    assert device.counters.unloads == 1


def test_negative_keep_alive_keeps_the_model(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    client.generate(model="mock", prompt="hello", keep_alive=-1)
    (model,) = client.ps().models
    assert model.expires_at is not None and model.expires_at.year > 2200

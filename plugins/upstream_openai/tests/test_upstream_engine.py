"""A remote engine through the front: discovery, generation, embeddings and failures,
over real HTTP with the official ``openai`` client (the fake engine imitates one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_upstream.testing import FakeEngine, health_devices, upstream_table, wait_until

from .conftest import Front

CHAT = [{"role": "user", "content": "hello there"}]


def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_are_discovered_and_the_device_is_shown(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    _, live = fake
    with front(upstream_table("lab", live.url + "/v1", prefix="lab/")) as server:
        ids = [m.id for m in client(server).models.list().data]
        assert "lab/fake-chat:latest" in ids and "lab/fake-embed:latest" in ids
        device = health_devices(server.url)["upstream:lab"]
        assert device["present"] and device["backend"] == "upstream-lab"
        assert device["properties"]["circuit"] == "closed"
        assert device["properties"]["url"] == live.url + "/v1"


def test_chat_streamed_and_whole_with_the_engines_usage(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1")) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="fake-chat", messages=CHAT, max_tokens=50, temperature=0.5, seed=7,
            stop=["zzz"])  # type: ignore[arg-type]
        whole = raw.parse()
        assert raw.headers["x-npu-proxy-device"] == "upstream:lab"
        assert whole.choices[0].message.content == "You said: hello there"
        assert whole.usage is not None and whole.usage.completion_tokens == 4
        sent = engine.requests[-1]
        assert sent["model"] == "fake-chat" and sent["messages"] == CHAT
        assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["stop"]) == (
            50, 0.5, 7, ["zzz"])
        stream = client(server).chat.completions.create(
            model="fake-chat", messages=CHAT, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: hello there"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_tool_calls_and_response_format_pass_through(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    tools = [{"type": "function", "function": {
        "name": "weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    with front(upstream_table("lab", live.url + "/v1")) as server:
        reply = client(server).chat.completions.create(
            model="fake-chat", messages=CHAT, tools=tools)  # type: ignore[arg-type]
        call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "weather"  # type: ignore[union-attr]
        assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
        assert reply.choices[0].finish_reason == "tool_calls"
        assert engine.requests[-1]["tools"] == tools
        client(server).chat.completions.create(
            model="fake-chat", messages=CHAT,  # type: ignore[arg-type]
            response_format={"type": "json_object"})
        assert engine.requests[-1]["response_format"] == {"type": "json_object"}


def test_completions_and_embeddings(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1")) as server:
        done = client(server).completions.create(model="fake-chat", prompt="a raw prompt")
        assert done.choices[0].text == "You said: a raw prompt"
        assert engine.requests[-1]["prompt"] == "a raw prompt"
        vectors = client(server).embeddings.create(model="fake-embed", input=["a", "b c"])
        assert [len(v.embedding) for v in vectors.data] == [8, 8]
        assert vectors.usage.prompt_tokens == 3
        assert engine.requests[-1]["input"] == ["a", "b c"]


def test_busy_engine_is_503_with_its_retry_after(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1")) as server:
        engine.busy = 7
        response = httpx.post(server.url + "/v1/chat/completions",
                              json={"model": "fake-chat", "messages": CHAT}, timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert "busy" in response.json()["error"]["message"]
        assert health_devices(server.url)["upstream:lab"]["present"]  # busy is not down


def test_a_refusal_is_the_dialects_400_with_the_engines_message(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1")) as server:
        engine.models = ("fake-embed",)  # the listing is stale: the engine refuses now
        with pytest.raises(openai.BadRequestError, match="`fake-chat` does not exist"):
            client(server).chat.completions.create(model="fake-chat", messages=CHAT)  # type: ignore[arg-type]


def test_a_silent_engine_is_a_504(fake: tuple[FakeEngine, LiveServer], front: Front) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1", read_timeout=0.3)) as server:
        engine.stall = 2.0
        response = httpx.post(server.url + "/v1/chat/completions",
                              json={"model": "fake-chat", "messages": CHAT}, timeout=10)
        assert response.status_code == 504
        assert "sent nothing for 0.3 s" in response.json()["error"]["message"]


def test_cut_stream_opens_the_circuit_and_a_good_probe_closes_it(
    fake: tuple[FakeEngine, LiveServer], front: Front
) -> None:
    engine, live = fake
    with front(upstream_table("lab", live.url + "/v1", failures=1)) as server:
        engine.cut_after = 2
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=10, json={
                "model": "fake-chat", "messages": CHAT, "stream": True}) as response:
            assert response.status_code == 200
            body = response.read().decode()
        assert "upstream lab failed (mid-stream)" in body and "[DONE]" not in body
        down = health_devices(server.url)["upstream:lab"]
        assert not down["present"] and down["properties"]["circuit"] == "open"
        assert "mid-stream" in down["error"]
        engine.cut_after = None
        wait_until(lambda: health_devices(server.url)["upstream:lab"]["present"])
        assert client(server).chat.completions.create(
            model="fake-chat", messages=CHAT).choices[0].message.content  # type: ignore[arg-type]


def test_a_client_that_leaves_closes_the_upstream_request(front: Front) -> None:
    engine = FakeEngine(token_delay=0.2)
    with LiveServer(engine.app()) as live, \
            front(upstream_table("lab", live.url + "/v1")) as server:
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=10, json={
                "model": "fake-chat", "messages": CHAT, "stream": True}) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            wait_until(lambda: engine.in_flight == 1)
        wait_until(lambda: engine.cancelled == 1 and engine.in_flight == 0)
        wait_until(lambda: server.ctx.engine.queues["upstream:lab"].in_flight == 0)


def test_an_engine_that_is_down_at_start_comes_up_by_itself(front: Front) -> None:
    engine = FakeEngine()
    live = LiveServer(engine.app())
    with front(upstream_table("lab", live.url + "/v1")) as server:
        down = health_devices(server.url)["upstream:lab"]
        assert not down["present"] and "connection refused" in down["error"]
        with live:
            wait_until(lambda: health_devices(server.url)["upstream:lab"]["present"])
            ids = [m.id for m in client(server).models.list().data]
            assert "fake-chat:latest" in ids


def test_npu_proxy_devices_lists_the_upstream(fake: tuple[FakeEngine, LiveServer]) -> None:
    _, live = fake
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    env["NPU_PROXY_UPSTREAMS"] = f"lab={live.url}/v1,gone=http://127.0.0.1:9/v1"
    done = subprocess.run([sys.executable, "-m", "npu_proxy", "--plugins", "upstream",
                           "devices", "--json"], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    rows = {row["device"]: row for row in json.loads(done.stdout)}
    assert rows["upstream:lab"]["present"] and rows["upstream:lab"]["backend"] == "upstream-lab"
    assert not rows["upstream:gone"]["present"]
    assert "connection refused" in rows["upstream:gone"]["error"]

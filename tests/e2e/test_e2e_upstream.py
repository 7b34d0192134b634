"""A front npu-proxy whose only real model runs on a second npu-proxy process.

The upstream is ``npu-proxy serve`` started by the test (the real CPU backend, the
embedded SmolLM2 and MiniLM); the front runs every dialect and the upstream plugin,
with no local device. Each dialect's chat (streamed and whole), embeddings, discovery,
the Anthropic model mapping, cancellation reaching the upstream, a busy upstream, and
an upstream killed mid-stream and restarted are tried with the official clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from npu_proxy.testing import LiveServer, free_port, make_app, test_settings
from npu_proxy_upstream.testing import health_devices, probed, upstream_table, wait_until

MODEL = "smollm2:135m"
CHAT = [{"role": "user", "content": "Say hello."}]
#: A request whose greedy answer runs to its 400 tokens: seconds of decoding on a CPU.
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


class UpstreamProcess:
    """``npu-proxy serve`` on a free port (or ``port``) with the real CPU backend."""

    def __init__(self, store: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
        self.env.update(NPU_PROXY_MODEL_PATH=str(store), NPU_PROXY_DEVICE="CPU", **env)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UpstreamProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "npu_proxy", "--plugins", "openai,openvino,openvino-cpu",
             "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, "the upstream npu-proxy exited"
            assert time.monotonic() < deadline, "the upstream npu-proxy did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).json()["status"] == "ok":
                    return self
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def in_flight(self) -> int:
        return int(health_devices(self.url)["CPU"]["in_flight"])

    def waiting(self) -> int:
        return int(health_devices(self.url)["CPU"]["queue_depth"])


@contextlib.contextmanager
def front_for(upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              **keys: Any) -> Iterator[LiveServer]:
    """Every dialect, and ``upstream_url`` as its one device ``upstream:up``."""
    path = tmp_path / "upstreams.toml"
    path.write_text(upstream_table("up", upstream_url + "/v1", **keys), "utf-8")
    monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(path))
    monkeypatch.setenv("NPU_PROXY_UPSTREAM_PROBE", "0.2")
    app = make_app(test_settings(tmp_path / "front"),
                   ["ollama", "openai", "anthropic", "upstream"])
    with LiveServer(app) as server:
        wait_until(lambda: probed(server.url))
        yield server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model store for every upstream process: the compiled-model cache is shared."""
    return tmp_path_factory.mktemp("upstream-models")


@pytest.fixture(scope="module")
def upstream(store: Path) -> Iterator[UpstreamProcess]:
    """One generation at a time and one waiting: a second request waits (silent), a
    third finds it busy."""
    with UpstreamProcess(store, NPU_PROXY_MAX_QUEUE="1", NPU_PROXY_MAX_PARALLEL="1") as process:
        yield process


@pytest.fixture
def front(upstream: UpstreamProcess, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    with front_for(upstream.url, tmp_path, monkeypatch) as server:
        yield server


def test_models_are_discovered_in_every_listing(front: LiveServer) -> None:
    tags = [m["name"] for m in httpx.get(front.url + "/api/tags").json()["models"]]
    assert MODEL in tags and "all-minilm:latest" in tags
    ids = [m["id"] for m in httpx.get(front.url + "/v1/models").json()["data"]]
    assert MODEL in ids
    device = health_devices(front.url)["upstream:up"]
    assert device["present"] and MODEL in device["properties"]["models"]


def test_openai_chat_streamed_and_whole(front: LiveServer) -> None:
    client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    whole = raw.parse()
    assert raw.headers["x-npu-proxy-device"] == "upstream:up"
    assert whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    assert whole.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0,  # type: ignore[arg-type]
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole.choices[0].message.content  # greedy: the same text either way


def test_ollama_chat_streamed_and_whole(front: LiveServer) -> None:
    client = ollama.Client(host=front.url)
    options = {"num_predict": 8, "temperature": 0}
    whole = client.chat(model=MODEL, messages=CHAT, options=options)
    assert whole.message.content and whole.eval_count and whole.prompt_eval_count
    parts = list(client.chat(model=MODEL, messages=CHAT, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count


def test_anthropic_messages_streamed_and_whole_through_the_model_mapping(
    front: LiveServer,
) -> None:
    client = anthropic.Anthropic(base_url=front.url, api_key="unused", max_retries=0)
    whole = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=8,
                                   messages=CHAT)  # type: ignore[arg-type]
    text = "".join(b.text for b in whole.content if b.type == "text")
    assert text and whole.usage.output_tokens > 0
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=8,
                                messages=CHAT) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
    assert streamed == text


def test_embeddings_through_openai_and_ollama(front: LiveServer) -> None:
    client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    vectors = client.embeddings.create(model="all-minilm", input=["a cat", "a dog"])
    assert [len(v.embedding) for v in vectors.data] == [384, 384]
    assert vectors.usage.prompt_tokens > 0
    embedded = ollama.Client(host=front.url).embed(model="all-minilm", input="a cat")
    assert len(embedded.embeddings[0]) == 384
    assert embedded.embeddings[0] == pytest.approx(vectors.data[0].embedding, abs=1e-5)


def test_a_client_that_leaves_frees_the_upstream_slot(
    front: LiveServer, upstream: UpstreamProcess
) -> None:
    with httpx.stream("POST", front.url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": CHAT, "max_tokens": 400, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"content"' in line)
        assert upstream.in_flight() == 1
    wait_until(lambda: upstream.in_flight() == 0)


@contextlib.contextmanager
def occupied(front: LiveServer) -> Iterator[None]:
    """A long stream through ``front`` holds the upstream's one slot meanwhile."""
    with httpx.stream("POST", front.url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": LONG, "max_tokens": 400, "stream": True}) as running:
        lines = running.iter_lines()  # kept: a dropped iterator closes the response
        assert next(line for line in lines if '"content"' in line)
        yield


def test_a_busy_upstream_is_503_with_retry_after(
    front: LiveServer, upstream: UpstreamProcess
) -> None:
    answers: list[httpx.Response] = []
    second = threading.Thread(target=lambda: answers.append(httpx.post(
        front.url + "/v1/chat/completions", timeout=60,
        json={"model": MODEL, "messages": CHAT, "max_tokens": 4})))
    with occupied(front):
        second.start()  # waits in the upstream's queue
        wait_until(lambda: upstream.waiting() == 1, 30)
        refused = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                             json={"model": MODEL, "messages": CHAT, "max_tokens": 4})
    second.join(60)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "upstream up is busy" in refused.json()["error"]["message"]
    assert [a.status_code for a in answers] == [200]  # the waiting one ran once it could


def test_a_silent_upstream_is_504_and_its_request_is_withdrawn(
    upstream: UpstreamProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with front_for(upstream.url, tmp_path, monkeypatch, read_timeout=1.0) as front, \
            occupied(front):
        # the upstream queues it behind the running stream and sends nothing meanwhile
        late = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": CHAT, "max_tokens": 4})
        assert late.status_code == 504
        assert "upstream up sent nothing for 1 s" in late.json()["error"]["message"]
        wait_until(lambda: upstream.waiting() == 0, 30)


def test_an_upstream_killed_mid_stream_opens_the_circuit_until_it_restarts(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = UpstreamProcess(store)
    with first, front_for(first.url, tmp_path, monkeypatch, failures=1) as front:
        with httpx.stream("POST", front.url + "/v1/chat/completions", timeout=60, json={
                "model": MODEL, "messages": CHAT, "max_tokens": 400,
                "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if '"content"' in line)
            first.kill()
            rest = [line for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "upstream up failed" in error["message"]
        down = health_devices(front.url)["upstream:up"]
        assert not down["present"] and down["properties"]["circuit"] == "open"
        assert "circuit open" in down["error"]
        refused = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                             json={"model": MODEL, "messages": CHAT, "max_tokens": 4})
        assert refused.status_code == 503
        with UpstreamProcess(store, port=first.port):
            # its probe answers again: the circuit closes and routing may choose it
            wait_until(lambda: health_devices(front.url)["upstream:up"]["present"], 30)
            up = health_devices(front.url)["upstream:up"]
            assert up["properties"]["circuit"] == "closed" and not up["error"]


def test_tool_calls_pass_through_a_mock_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An npu-proxy serving the mock backend is the upstream: its tool calls reach each
    dialect's client whole, and the tool's answer goes back to it."""
    tools = [{"type": "function", "function": {
        "name": "weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    mock_app = make_app(test_settings(tmp_path / "mock"), ["mock", "openai"])
    with LiveServer(mock_app) as mock, front_for(mock.url, tmp_path, monkeypatch) as front:
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
        asked = [{"role": "user", "content": "Weather in Paris?"}]
        reply = client.chat.completions.create(model="mock", messages=asked,  # type: ignore[arg-type]
                                               tools=tools)  # type: ignore[arg-type]
        call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "mock"}  # type: ignore[union-attr]
        assert reply.choices[0].finish_reason == "tool_calls"
        answered = [*asked, reply.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        final = client.chat.completions.create(model="mock", messages=answered,  # type: ignore[arg-type]
                                               tools=tools)  # type: ignore[arg-type]
        assert final.choices[0].message.content and final.choices[0].finish_reason == "stop"
        chunks = list(anthropic.Anthropic(base_url=front.url, api_key="unused").messages.create(
            model="mock", max_tokens=64, messages=[{"role": "user", "content": "Weather?"}],
            tools=[{"name": "weather", "input_schema": tools[0]["function"]["parameters"]}],  # type: ignore[index,list-item]
            stream=True))
        uses = [c for c in chunks if c.type == "content_block_start"
                and c.content_block.type == "tool_use"]  # type: ignore[union-attr]
        assert uses and uses[0].content_block.name == "weather"  # type: ignore[union-attr]

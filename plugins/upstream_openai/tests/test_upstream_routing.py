"""One local device and two upstream replicas of one model: local first, overflow,
prefix affinity across turns and failover, each with its route reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, mock_models
from npu_proxy_upstream.testing import FakeEngine, health_devices, upstream_table, wait_until

from .conftest import Front

MODEL = mock_models()[0]  # mock:latest, served locally and by both replicas


@pytest.fixture
def replicas() -> Iterator[list[tuple[FakeEngine, LiveServer]]]:
    engines = [FakeEngine(models=("mock",)) for _ in range(2)]
    with contextlib.ExitStack() as stack:
        yield [(e, stack.enter_context(LiveServer(e.app()))) for e in engines]


def tables(replicas: list[tuple[FakeEngine, LiveServer]]) -> str:
    return "".join(upstream_table(name, live.url + "/v1", failures=1)
                   for name, (_, live) in zip("ab", replicas, strict=True))


def chat(server: LiveServer, *texts: str) -> httpx.Response:
    """One turn of a conversation whose user messages are ``texts`` (replies between)."""
    messages: list[dict[str, str]] = []
    for i, text in enumerate(texts):
        if i:
            messages.append({"role": "assistant", "content": "noted"})
        messages.append({"role": "user", "content": text})
    response = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                          json={"model": "mock", "messages": messages})
    assert response.status_code == 200, response.text
    return response


def where(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-npu-proxy-device"], response.headers["x-npu-proxy-route-reason"]


def test_local_first_and_overflow_when_its_queue_is_full(
    replicas: list[tuple[FakeEngine, LiveServer]], front: Front
) -> None:
    local = MockBackend("CPU", token_delay=0.05, max_parallel=1)
    with front(tables(replicas), local, (MODEL,), max_queue=0) as server:
        assert where(chat(server, "hello")) == ("CPU", "preferred_device")
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30, json={
                "model": "mock", "stream": True,
                "messages": [{"role": "user", "content": "a long one"}]}) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            wait_until(lambda: server.ctx.engine.queues["CPU"].in_flight == 1)
            device, reason = where(chat(server, "hello"))
        assert device.startswith("upstream:") and reason == "queue_full"


def test_long_prompts_overflow_and_conversations_keep_their_replica(
    replicas: list[tuple[FakeEngine, LiveServer]], front: Front
) -> None:
    local = MockBackend("CPU", max_prompt_len=12)
    with front(tables(replicas), local, (MODEL,)) as server:
        assert where(chat(server, "hi")) == ("CPU", "preferred_device")
        chosen = {}
        for n in range(8):
            first = f"conversation number {n} about a long enough subject"
            device, reason = where(chat(server, first))
            assert reason == "device_prompt_limit_exceeded"
            assert where(chat(server, first, "and then?"))[0] == device
            assert where(chat(server, first, "and then?", "and after that?"))[0] == device
            chosen[n] = device
        assert set(chosen.values()) == {"upstream:a", "upstream:b"}


def test_a_dead_replica_fails_over_and_its_circuit_opens(
    replicas: list[tuple[FakeEngine, LiveServer]], front: Front
) -> None:
    local = MockBackend("CPU", max_prompt_len=12)
    with front(tables(replicas), local, (MODEL,)) as server:
        talks = {}
        for n in range(8):
            first = f"conversation number {n} about a long enough subject"
            talks[first] = where(chat(server, first))[0]
        on_b = [first for first, device in talks.items() if device == "upstream:b"]
        assert on_b
        engine_b, live_b = replicas[1]
        live_b.__exit__(None, None, None)  # replica b dies
        assert where(chat(server, on_b[0], "still there?")) == ("upstream:a", "failover")
        down = health_devices(server.url)["upstream:b"]
        assert not down["present"] and "connection refused" in down["error"]
        # while b is down its conversations go to a without trying b first
        for first in on_b[1:]:
            assert where(chat(server, first, "still there?")) == (
                "upstream:a", "device_prompt_limit_exceeded")
        with LiveServer(engine_b.app(), port=live_b.port):  # b comes back
            wait_until(lambda: health_devices(server.url)["upstream:b"]["present"])
            assert where(chat(server, on_b[0], "back?"))[0] == "upstream:b"


def long_text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


def test_a_prompt_over_the_local_context_overflows_whole(
    replicas: list[tuple[FakeEngine, LiveServer]], front: Front
) -> None:
    model = replace(MODEL, context_length=40)
    with front(tables(replicas), MockBackend("CPU"), (model,),
               dialects=("openai", "ollama")) as server:
        assert where(chat(server, "hi")) == ("CPU", "preferred_device")
        device, reason = where(chat(server, long_text(60)))
        assert device.startswith("upstream:") and reason == "device_prompt_limit_exceeded"
        # Ollama's default truncate would drop the start of this conversation to fit the
        # local context; an engine with room gets all of it instead.
        messages = [{"role": "user", "content": long_text(60)},
                    {"role": "assistant", "content": "noted"},
                    {"role": "user", "content": "and then?"}]
        response = httpx.post(server.url + "/api/chat", timeout=30, json={
            "model": "mock", "stream": False, "messages": messages})
        assert response.status_code == 200, response.text
        device, reason = where(response)
        assert device.startswith("upstream:") and reason == "device_prompt_limit_exceeded"
        engine = replicas["ab".index(device.removeprefix("upstream:"))][0]
        assert [m["content"] for m in engine.requests[-1]["messages"]] == [
            m["content"] for m in messages]


def test_a_prompt_over_every_context_is_refused_and_fits_locally_without_engines(
    front: Front,
) -> None:
    engines = [FakeEngine(models=("mock",), context=80) for _ in range(2)]
    model = replace(MODEL, context_length=40)
    with contextlib.ExitStack() as stack:
        replicas = [(e, stack.enter_context(LiveServer(e.app()))) for e in engines]
        with front(tables(replicas), MockBackend("CPU"), (model,),
                   dialects=("openai", "ollama")) as server:
            # over the local context, within the engines' own: it goes to one
            device, _ = where(chat(server, long_text(44)))
            assert device.startswith("upstream:")
            # over every context: refused, as without engines
            response = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
                "model": "mock", "messages": [{"role": "user", "content": long_text(90)}]})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "context_length_exceeded"
            # Ollama's default truncate keeps what fits the local context and answers
            response = httpx.post(server.url + "/api/chat", timeout=30, json={
                "model": "mock", "stream": False, "messages": [
                    {"role": "user", "content": long_text(90)},
                    {"role": "assistant", "content": "noted"},
                    {"role": "user", "content": "and then?"}]})
            assert response.status_code == 200, response.text
            assert where(response)[0] == "CPU"


def test_embeddings_fail_over_to_another_replica(front: Front) -> None:
    engines = [FakeEngine(models=("fake-embed",)) for _ in range(2)]
    with contextlib.ExitStack() as stack:
        replicas = [(e, stack.enter_context(LiveServer(e.app()))) for e in engines]
        with front(tables(replicas)) as server:
            def embed() -> httpx.Response:
                response = httpx.post(server.url + "/v1/embeddings", timeout=30, json={
                    "model": "fake-embed", "input": ["one", "two"]})
                assert response.status_code == 200, response.text
                assert len(response.json()["data"]) == 2
                return response

            first, _ = where(embed())
            dead = "ab".index(first.removeprefix("upstream:"))
            replicas[dead][1].__exit__(None, None, None)
            device, reason = where(embed())
            assert device != first and reason == "failover"
            assert len(engines[1 - dead].requests) == 1

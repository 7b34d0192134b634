"""Streams that end early: a client that leaves, a device that fails mid-stream."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import httpx
import ollama
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend

Wait = Callable[[Callable[[], bool], str], None]


def test_client_leaving_mid_stream_cancels_the_generation(
    start: Callable[..., LiveServer], wait_for: Wait
) -> None:
    backend = MockBackend(token_delay=0.05, max_parallel=1)
    server = start(backend)
    client = ollama.Client(host=server.url)
    stream = client.chat(
        model="mock", messages=[{"role": "user", "content": "a long story"}], stream=True
    )
    first = next(stream)
    assert first.message.content and not first.done
    stream.close()  # the client closes the connection after one chunk

    wait_for(lambda: backend.counters.cancelled == 1, "the generation to be cancelled")
    assert backend.counters.finished == 0
    queue = server.ctx.engine.queues["MOCK"]
    wait_for(lambda: queue.in_flight == 0, "the device slot to be freed")
    # The device is free: the next request runs to the end.
    reply = client.generate(model="mock", prompt="next", stream=False)
    assert reply.done and backend.counters.finished == 1
    assert backend.counters.cancelled == 1


def test_client_leaving_a_whole_request_cancels_it(
    start: Callable[..., LiveServer], wait_for: Wait
) -> None:
    backend = MockBackend(token_delay=0.2, max_parallel=1)
    server = start(backend)
    body = {"model": "mock", "prompt": "slow", "stream": False}
    # The client gives up (a read timeout closes its connection) long before the end.
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(server.url + "/api/generate", json=body, timeout=0.5)
    wait_for(lambda: backend.counters.cancelled == 1, "the generation to be cancelled")
    assert backend.counters.finished == 0


def test_failure_after_streaming_began_ends_with_one_error_line(
    start: Callable[..., LiveServer],
) -> None:
    backend = MockBackend(token_delay=0.001, fail_after=3)
    server = start(backend)
    body = {"model": "mock", "prompt": "hello"}
    with httpx.stream("POST", server.url + "/api/generate", json=body) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(line["done"] is False and line["response"] for line in lines[:3])
    assert len(lines) == 4
    assert set(lines[-1]) == {"error"} and lines[-1]["error"]
    assert backend.counters.cancelled == 1
    assert server.ctx.engine.queues["MOCK"].in_flight == 0


def test_failure_before_the_first_token_is_a_status(start: Callable[..., LiveServer]) -> None:
    backend = MockBackend(token_delay=0.001, fail_after=0)
    server = start(backend)
    client = ollama.Client(host=server.url)
    try:
        list(client.generate(model="mock", prompt="hello", stream=True))
    except ollama.ResponseError as exc:
        assert exc.status_code == 500
        assert "failed" in exc.error
    else:
        raise AssertionError("the failure was not reported")
    assert server.ctx.engine.queues["MOCK"].in_flight == 0


def test_prompt_longer_than_the_device_accepts_is_400(start: Callable[..., LiveServer]) -> None:
    backend = MockBackend(token_delay=0.001, max_prompt_len=5)
    server = start(backend)
    response = httpx.post(
        server.url + "/api/chat",
        json={"model": "mock", "messages": [{"role": "user", "content": "one two three four"}]},
    )
    assert response.status_code == 400
    assert "tokens" in response.json()["error"]
    assert backend.counters.started == 0

"""Disconnects, device failures mid-stream, and a full queue, seen through real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import openai
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend

CHAT_MODEL = "mock"
HELLO = [{"role": "user", "content": "Tell me a story."}]


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_disconnect_mid_stream_cancels_the_generation(
    server_with: Callable[..., LiveServer], wait_for: Callable[..., None], route: str
) -> None:
    backend = MockBackend(token_delay=0.2)
    with server_with(backend) as server:
        client = _client(server)
        if route == "chat":
            stream = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, stream=True)
        else:
            stream = client.completions.create(
                model=CHAT_MODEL, prompt="Once upon a time", max_tokens=None, stream=True
            )
        iterator = iter(stream)
        next(iterator)
        next(iterator)
        stream.close()  # the client goes away mid-stream
        wait_for(lambda: backend.counters.cancelled == 1, "the generation to be cancelled")
        assert backend.counters.finished == 0
        assert backend.counters.active == 0
        # The slot is free again: the next request is served to the end.
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=2)
        assert reply.choices[0].finish_reason == "length"
        assert backend.counters.finished == 1


def test_device_failure_mid_stream_ends_with_an_error_event(
    server_with: Callable[..., LiveServer],
) -> None:
    backend = MockBackend(fail_after=2)
    with server_with(backend) as server:
        client = _client(server)
        received: list[str] = []
        with pytest.raises(openai.APIError) as failure:
            for chunk in client.chat.completions.create(
                model=CHAT_MODEL, messages=HELLO, stream=True
            ):
                received.append(chunk.choices[0].delta.content or "")
        assert len([r for r in received if r]) == 2
        assert "MOCK backend failed" in failure.value.message
        assert isinstance(failure.value.body, dict)
        assert failure.value.body["type"] == "server_error"
        # A whole (non-streamed) reply fails with a plain 500 in OpenAI's shape.
        with pytest.raises(openai.InternalServerError) as whole:
            client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
        assert whole.value.status_code == 500
        assert whole.value.type == "server_error"


def test_full_queue_answers_503_with_retry_after(
    server_with: Callable[..., LiveServer],
) -> None:
    backend = MockBackend(token_delay=0.5, max_parallel=1)
    with server_with(backend, max_queue=0) as server:
        client = _client(server)
        # The stream holds the only slot from the moment its response begins.
        with client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, stream=True):
            with pytest.raises(openai.InternalServerError) as busy:
                client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
            assert busy.value.status_code == 503
            assert busy.value.response.headers["retry-after"].isdigit()
            assert busy.value.type == "server_error"
            assert busy.value.code == "busy"


def test_disconnect_during_a_whole_reply_cancels_it(
    server_with: Callable[..., LiveServer], wait_for: Callable[..., None]
) -> None:
    backend = MockBackend(token_delay=0.2)
    with server_with(backend) as server:
        body = json.dumps({"model": CHAT_MODEL, "messages": HELLO}).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(head + body)
            wait_for(lambda: backend.counters.started == 1, "the generation to start")
        # The client hung up before any byte of the reply.
        wait_for(lambda: backend.counters.cancelled == 1, "the generation to be cancelled")
        assert backend.counters.finished == 0
        assert backend.counters.active == 0

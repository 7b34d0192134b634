"""The core's streaming path (npu_proxy.streaming) over real HTTP, with inline sources.

Each test serves a bare FastAPI app through uvicorn whose one route streams a tiny
async event source through an inline encoder, and reads it with httpx.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from npu_proxy.api import ApiDialect
from npu_proxy.engine.errors import BackendError, BusyError, EngineError, InvalidRequestError
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from npu_proxy.streaming import (
    EVENT_STREAM,
    NDJSON,
    ClosingStreamResponse,
    StreamEncoder,
    collect,
    ndjson_line,
    sse_event,
    stream_response,
)
from npu_proxy.testing import LiveServer
from npu_proxy.web import CLIENT_CLOSED, ClientDisconnected, HttpError
from starlette.responses import Response

DONE = Done(FinishReason.STOP, Usage(prompt_tokens=3, completion_tokens=2))
CALL = ToolCall(id="call_1", name="lookup", arguments={"q": "x"})


class Source:
    """An async event source that records how it ended.

    Yields ``events`` with ``delay`` seconds before each; an exception among them is
    raised instead of yielded; ``forever`` keeps yielding text after them.
    """

    def __init__(self, events: list[GenerationEvent | Exception], *, delay: float = 0.0,
                 forever: bool = False) -> None:
        self.events = events
        self.delay = delay
        self.forever = forever
        self.yielded = 0
        self.cancelled = False
        self.closed = threading.Event()

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._run()

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        try:
            for item in self.events:
                await asyncio.sleep(self.delay)
                if isinstance(item, Exception):
                    raise item
                self.yielded += 1
                yield item
            while self.forever:
                await asyncio.sleep(self.delay)
                self.yielded += 1
                yield TextDelta("more")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        self.closed.set()


class Lines(StreamEncoder[GenerationEvent]):
    """NDJSON: an opening line, one line per event, a closing line."""

    media_type = NDJSON

    def opening(self) -> Iterable[bytes]:
        return [ndjson_line({"open": True})]

    def encode(self, event: GenerationEvent) -> Iterable[bytes]:
        if isinstance(event, TextDelta):
            return [ndjson_line({"text": event.text})] if event.text else []
        if isinstance(event, ToolCallDelta):
            return [ndjson_line({"call": event.call.name})]
        return [ndjson_line({"done": event.usage.completion_tokens})]

    def closing(self) -> Iterable[bytes]:
        return [ndjson_line({"closed": True})]

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return [ndjson_line({"error": error.message, "status": error.status})]


class Pinged(StreamEncoder[GenerationEvent]):
    """SSE with a ``ping`` after every ``interval`` idle seconds."""

    media_type = EVENT_STREAM

    def __init__(self, interval: float) -> None:
        self.heartbeat_interval = interval

    def encode(self, event: GenerationEvent) -> Iterable[bytes]:
        text = event.text if isinstance(event, TextDelta) else "done"
        return [sse_event({"text": text}, event="text")]

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return [sse_event({"message": error.message}, event="error")]

    def heartbeat(self) -> Iterable[bytes]:
        return [sse_event({"type": "ping"}, event="ping")]


def serve(source: Source, encoder: StreamEncoder[GenerationEvent], *,
          wait_first: bool = False) -> tuple[FastAPI, list[str]]:
    """An app whose ``POST /stream`` streams ``source``; the list records ``close`` calls."""
    app = FastAPI()
    closes: list[str] = []

    async def close() -> None:
        closes.append("closed")
        await source.aclose()

    @app.post("/stream")
    async def stream(request: Request) -> Response:
        return await stream_response(request, source, encoder, close=close,
                                     headers={"X-NPU-Proxy-Device": "TEST"},
                                     wait_first=wait_first)

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(ClientDisconnected)
    async def disconnected(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    return app, closes


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_events_are_encoded_in_order_with_the_encoders_framing() -> None:
    source = Source([TextDelta("Hel"), TextDelta(""), TextDelta("lo"), ToolCallDelta(CALL),
                     DONE])
    app, closes = serve(source, Lines())
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == NDJSON
    assert reply.headers["x-npu-proxy-device"] == "TEST"
    assert reply.content.endswith(b"\n")
    assert lines_of(reply.text) == [
        {"open": True}, {"text": "Hel"}, {"text": "lo"}, {"call": "lookup"}, {"done": 2},
        {"closed": True},
    ]
    assert closes == ["closed"]


def test_an_error_mid_stream_ends_it_with_the_encoders_failure_frame() -> None:
    source = Source([TextDelta("a"), BackendError("the NPU backend failed"), DONE])
    app, closes = serve(source, Lines())
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert reply.status_code == 200  # the status line went out with the first frame
    assert lines_of(reply.text) == [
        {"open": True}, {"text": "a"}, {"error": "the NPU backend failed", "status": 500},
    ]
    assert closes == ["closed"]


def test_an_unexpected_error_is_logged_and_told_as_internal(
        caplog: pytest.LogCaptureFixture) -> None:
    source = Source([TextDelta("a"), RuntimeError("/secret/path exploded")])
    app, _ = serve(source, Lines())
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert lines_of(reply.text)[-1] == {"error": "internal server error", "status": 500}
    assert "secret" not in reply.text
    assert any("streamed response failed" in r.message for r in caplog.records)


def test_wait_first_turns_a_failure_before_the_first_event_into_a_status() -> None:
    source = Source([InvalidRequestError("the prompt does not fit")])
    app, closes = serve(source, Lines(), wait_first=True)
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert (reply.status_code, reply.json()) == (400, {"error": "the prompt does not fit"})
    assert closes == ["closed"]


def test_wait_first_streams_the_first_event_once() -> None:
    source = Source([TextDelta("first"), DONE])
    app, _ = serve(source, Lines(), wait_first=True)
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert lines_of(reply.text) == [{"open": True}, {"text": "first"}, {"done": 2},
                                    {"closed": True}]


def test_a_client_that_leaves_cancels_the_generation_and_closes_the_source() -> None:
    source = Source([TextDelta("a")], delay=0.05, forever=True)
    app, closes = serve(source, Lines())
    with LiveServer(app) as server, httpx.Client() as client:
        with client.stream("POST", server.url + "/stream") as reply:
            lines = reply.iter_lines()
            assert json.loads(next(lines)) == {"open": True}
            assert json.loads(next(lines)) == {"text": "a"}
        assert source.closed.wait(5), "the source was not closed after the client left"
        seen = source.yielded
        time.sleep(0.3)
        assert source.yielded == seen, "the generation kept running"
    assert source.cancelled
    assert closes == ["closed"]


def test_heartbeats_fill_idle_time_without_cancelling_the_event_being_made() -> None:
    source = Source([TextDelta("slow"), DONE], delay=0.35)
    app, _ = serve(source, Pinged(interval=0.1))
    with LiveServer(app) as server:
        reply = httpx.post(server.url + "/stream")
    assert reply.headers["content-type"].startswith(EVENT_STREAM)
    frames = [f for f in reply.text.split("\n\n") if f]
    kinds = [f.split("\n")[0] for f in frames]
    assert kinds[0] == "event: ping"  # nothing came for a while: a ping first
    texts = [json.loads(f.split("data: ")[1]) for f in frames if f.startswith("event: text")]
    assert texts == [{"text": "slow"}, {"text": "done"}]  # the slow event arrived whole
    assert kinds.count("event: ping") >= 2
    assert source.yielded == 2


async def test_a_body_that_never_started_still_runs_on_close() -> None:
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        await asyncio.sleep(10)
        yield b"never"

    async def on_close() -> None:
        closed.append("closed")

    response = ClosingStreamResponse(body(), media_type=NDJSON, on_close=on_close)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    await asyncio.wait_for(response(scope, receive, send), 5)
    assert closed == ["closed"]
    assert not any(m.get("body") == b"never" for m in sent)


async def test_a_stream_the_server_cancels_ends_with_its_stop_frames_and_returns() -> None:
    # What uvicorn does past timeout_graceful_shutdown: cancel the response's task.
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"one\n"
        await asyncio.sleep(3600)
        yield b"never\n"

    async def on_close() -> None:
        closed.append("closed")

    response = ClosingStreamResponse(body(), media_type=NDJSON, on_close=on_close,
                                     stopped=lambda: [b'{"error":"stopping"}\n'])
    sent: list[dict[str, Any]] = []
    streaming = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == b"one\n":
            streaming.set()

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    task = asyncio.create_task(response(scope, receive, send))
    await asyncio.wait_for(streaming.wait(), 5)
    task.cancel()
    await asyncio.wait_for(task, 5)  # returns: nothing for the server to log
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"one\n", True), (b'{"error":"stopping"}\n', True), (b"", False)]
    assert closed == ["closed"]


async def test_collect_returns_text_tool_calls_and_usage_and_closes() -> None:
    source = Source([TextDelta("Hel"), ToolCallDelta(CALL), TextDelta("lo"), DONE])
    whole = await collect(source)
    assert whole.text == "Hello"
    assert whole.calls == (CALL,)
    assert whole.done == DONE
    assert whole.usage.completion_tokens == 2
    assert whole.events == (TextDelta("Hel"), ToolCallDelta(CALL), TextDelta("lo"), DONE)
    assert source.closed.is_set()


async def test_collect_raises_the_generations_error_and_closes() -> None:
    source = Source([TextDelta("a"), BusyError("the queue is full", retry_after=3)])
    with pytest.raises(BusyError):
        await collect(source)
    assert source.closed.is_set()


async def test_collect_refuses_a_generation_without_a_result() -> None:
    source = Source([TextDelta("a")])
    with pytest.raises(BackendError, match="without a result"):
        await collect(source)
    assert source.closed.is_set()


def test_errors_carry_their_headers_and_param() -> None:
    assert BusyError("full", retry_after=4).headers == {"Retry-After": "4"}
    assert EngineError("boom").headers == {}
    assert InvalidRequestError("bad", param="stop").param == "stop"
    assert BackendError("x").param is None
    refused = HttpError(401, "missing API key", code="unauthorized",
                        headers={"WWW-Authenticate": "Bearer"})
    assert (refused.status, refused.code, refused.headers) == (
        401, "unauthorized", {"WWW-Authenticate": "Bearer"})


def test_the_default_error_response_is_plain_json() -> None:
    class Bare(ApiDialect):
        name = "bare"

        def router(self, ctx: Any) -> APIRouter:
            return APIRouter()

    response = Bare().error_response(BusyError("the queue is full", retry_after=2))
    assert response.status_code == 503
    assert json.loads(bytes(response.body)) == {"error": "the queue is full"}
    assert response.headers["retry-after"] == "2"

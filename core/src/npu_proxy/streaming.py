"""One way to answer with a generation: stream it, or collect it whole.

Dialects only encode. A :class:`StreamEncoder` says what the stream opens with, what
each event becomes, what ends it and how a failure is told (NDJSON lines for Ollama,
server-sent events for OpenAI and Anthropic); :func:`stream_response` does the rest:

- a client that leaves mid-stream cancels the generation at its next token, whatever
  the ASGI server (the response always watches for ``http.disconnect``);
- the source is closed, shielded from cancellation, however the response ends, also
  when its body never started, so the device slot is free again when it returns;
- an error after the first byte ends the stream with the encoder's error frame (the
  status is already 200); an unexpected one is logged and told as an internal error;
- a server that stops cancels the response when its grace period is over (uvicorn's
  ``timeout_graceful_shutdown``): the stream then ends with the encoder's error frame
  for :class:`~npu_proxy.engine.errors.ServerStoppingError` and a proper end of the
  body, between two frames (never inside one), and the cancellation is not passed on
  (the server would log it as a traceback and cut the connection);
- an encoder that wants heartbeats gets asked for one after every
  ``heartbeat_interval`` seconds without an event (the event being made is not
  cancelled by it).

:func:`collect` runs a generation to its end for a reply that is not streamed, and
:func:`admit` queues a request for a device unless the client leaves first.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from .engine.errors import BackendError, EngineError, ServerStoppingError
from .engine.types import (
    Done,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .web import until_disconnected

if TYPE_CHECKING:
    from .engine.engine import Engine, Generation

log = logging.getLogger(__name__)

E = TypeVar("E")

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"


def ndjson_line(payload: Any) -> bytes:
    """One NDJSON line: compact JSON (non-ASCII kept as UTF-8) and a newline."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def sse_event(data: Any, *, event: str | None = None, ascii_only: bool = False) -> bytes:
    """One server-sent event: an optional ``event:`` line, then compact JSON as ``data:``.

    ``ascii_only`` escapes every non-ASCII character (``\\uXXXX``), as OpenAI does.
    """
    body = json.dumps(data, ensure_ascii=ascii_only, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {body}\n\n".encode()


class ClosingStreamResponse(StreamingResponse):
    """A streamed body that stops when the client leaves and is always cleaned up.

    Starlette watches for ``http.disconnect`` only under ASGI spec versions below 2.4;
    this response always does, so the body is cancelled (at the token it waits for)
    whatever the server. Afterwards, shielded from cancellation and in every case, the
    body iterator is closed and ``on_close`` is awaited: a body that never started
    still releases what stands behind it. Cancelled from outside (the server stops),
    it ends the body with ``stopped()``'s frames and returns normally.
    """

    def __init__(
        self,
        body: AsyncIterable[bytes],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        stopped: Callable[[], Iterable[bytes]] | None = None,
    ) -> None:
        super().__init__(body, headers=headers, media_type=media_type)
        self._on_close = on_close
        self._stopped = stopped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent: set[str] = set()  # "start" once the status went out, "end" once the body ended

        async def tracked(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                sent.add("start")
            elif not message.get("more_body", False):
                sent.add("end")

        stopping = False
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(tracked)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        except OSError:
            pass  # the client closed the socket mid-write: nothing left to tell it
        except anyio.get_cancelled_exc_class():
            # Only the server cancels from outside (the group's own cancel is swallowed
            # by the group): it stops, past its grace period.
            stopping = True
        finally:
            with anyio.CancelScope(shield=True):
                if stopping and "end" not in sent:
                    await self._end_stopped(tracked, sent)
                closer = getattr(self.body_iterator, "aclose", None)
                if closer is not None:
                    await closer()
                if self._on_close is not None:
                    await self._on_close()

    async def _end_stopped(self, send: Send, sent: set[str]) -> None:
        """End the body with the stop's frames (after the status, if it has not gone)."""
        frames = list(self._stopped()) if self._stopped is not None else []
        try:
            if "start" not in sent:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
            for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client is gone as well


class StreamEncoder(abc.ABC, Generic[E]):
    """How a dialect writes one streamed reply; one instance per response.

    Every method returns the frames (bytes, already framed) to send, possibly none.
    """

    #: the response's media type: :data:`NDJSON`, :data:`EVENT_STREAM`, ...
    media_type: ClassVar[str]
    #: seconds without an event before :meth:`heartbeat` is asked for; None: never
    heartbeat_interval: float | None = None

    def opening(self) -> Iterable[bytes]:
        """What the stream starts with, before any event."""
        return ()

    @abc.abstractmethod
    def encode(self, event: E) -> Iterable[bytes]:
        """What ``event`` becomes on the wire."""

    def closing(self) -> Iterable[bytes]:
        """What ends a stream whose source ran to its end."""
        return ()

    @abc.abstractmethod
    def failure(self, error: EngineError) -> Iterable[bytes]:
        """The frames that end a stream broken by ``error``."""

    def heartbeat(self) -> Iterable[bytes]:
        """What keeps an idle connection open (only asked for with an interval)."""
        return ()


async def stream_response(
    request: Request,
    source: AsyncIterable[E],
    encoder: StreamEncoder[E],
    *,
    close: Callable[[], Awaitable[None]],
    headers: Mapping[str, str] | None = None,
    wait_first: bool = False,
) -> Response:
    """Stream ``source`` to the client through ``encoder``.

    :param source: the events; iterated once.
    :param close: releases what stands behind ``source`` (``Generation.aclose``);
        awaited exactly once, shielded, however the response ends.
    :param headers: the response headers (route headers, cache control).
    :param wait_first: wait for the first event before the status line goes out, so
        a failure during prefill still gets its own status: then an error (or a client
        that leaves, :class:`~npu_proxy.web.ClientDisconnected`) is raised here, after
        ``close`` ran.
    """
    events = aiter(source)
    first: list[E] = []
    if wait_first:
        try:
            first.append(await until_disconnected(request, _next(events)))
        except StopAsyncIteration:
            await close()
            raise BackendError("the generation ended without a result") from None
        except BaseException:
            await close()
            raise
    return ClosingStreamResponse(
        _frames(events, first, encoder),
        media_type=encoder.media_type,
        headers=headers,
        on_close=close,
        stopped=lambda: encoder.failure(ServerStoppingError()),
    )


async def _next(events: AsyncIterator[E]) -> E:
    return await anext(events)


async def _frames(
    events: AsyncIterator[E], first: list[E], encoder: StreamEncoder[E]
) -> AsyncIterator[bytes]:
    """The framed body (see the module docstring for what it guarantees)."""
    interval = encoder.heartbeat_interval
    pending: asyncio.Future[E] | None = None
    try:
        for frame in encoder.opening():
            yield frame
        for event in first:
            for frame in encoder.encode(event):
                yield frame
        while True:
            if interval is None:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
            else:
                if pending is None:
                    pending = asyncio.ensure_future(_next(events))
                # wait() (not wait_for) so a heartbeat never cancels the event being made.
                done, _ = await asyncio.wait({pending}, timeout=interval)
                if not done:
                    for frame in encoder.heartbeat():
                        yield frame
                    continue
                step, pending = pending, None
                try:
                    event = step.result()
                except StopAsyncIteration:
                    break
            for frame in encoder.encode(event):
                yield frame
        for frame in encoder.closing():
            yield frame
    except Exception as exc:
        if not isinstance(exc, EngineError):
            log.error("a streamed response failed", exc_info=exc)
            exc = EngineError("internal server error")
        for frame in encoder.failure(exc):
            yield frame
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


class EventSource(Protocol):
    """What :func:`collect` reads: a :class:`~npu_proxy.engine.engine.Generation`, or
    any async iterable of generation events that can be closed."""

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    def aclose(self) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Collected:
    """A finished generation: its text, its tool calls, how it ended, and every event
    in the order it came (for encoders that build their reply from the events), and
    its reasoning (``thinking``, empty when the model produced none)."""

    text: str
    calls: tuple[ToolCall, ...]
    done: Done
    events: tuple[GenerationEvent, ...]
    thinking: str = ""

    @property
    def usage(self) -> Usage:
        """The generation's measured counts and timings (``done.usage``)."""
        return self.done.usage


async def collect(source: EventSource) -> Collected:
    """Run ``source`` to its end and close it (also when it fails or is cancelled).

    Raises the generation's :class:`EngineError`, or :class:`BackendError` if it
    ended without a :class:`Done`.
    """
    events: list[GenerationEvent] = []
    try:
        async for event in source:
            events.append(event)
            if isinstance(event, Done):
                break
    finally:
        await source.aclose()
    if not events or not isinstance(events[-1], Done):
        raise BackendError("the generation ended without a result")
    return Collected(
        text="".join(e.text for e in events if isinstance(e, TextDelta)),
        calls=tuple(e.call for e in events if isinstance(e, ToolCallDelta)),
        done=events[-1],
        events=tuple(events),
        thinking="".join(e.text for e in events if isinstance(e, ThinkingDelta)),
    )


async def admit(engine: Engine, request: Request, work: GenerationRequest) -> Generation:
    """Queue ``work`` for a device; withdrawn (and ClientDisconnected raised) if the
    client leaves while it waits."""
    return await until_disconnected(request, engine.generate(work))


async def generate_whole(
    engine: Engine, request: Request, work: GenerationRequest
) -> tuple[Generation, Collected]:
    """Admit ``work`` and :func:`collect` it, both under the disconnect watch: a client
    that gives up on a reply that is not streamed stops the generation too."""

    async def whole() -> tuple[Generation, Collected]:
        generation = await engine.generate(work)
        return generation, await collect(generation)

    return await until_disconnected(request, whole())

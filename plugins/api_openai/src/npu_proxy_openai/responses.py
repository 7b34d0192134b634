"""``POST /v1/responses``, ``GET /v1/responses/{id}`` and ``DELETE /v1/responses/{id}``:
OpenAI's Responses API over the engine.

A response is answered whole (the ``response`` object) or streamed as the typed events
the SDKs parse (``response.created`` ... ``response.completed``, each with its
``sequence_number``; ``error`` and ``response.failed`` when a started stream breaks).
Finished responses are kept in the bounded :class:`~.responses_store.ResponseStore`
(unless ``store: false``), so a conversation continues by ``previous_response_id``.
Background responses are refused: every response is answered on its own connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import EngineError, InvalidRequestError
from npu_proxy.engine.types import Done, GenerationEvent, Message
from npu_proxy.streaming import (
    EVENT_STREAM,
    StreamEncoder,
    admit,
    generate_whole,
    sse_event,
    stream_response,
)
from npu_proxy.web import HttpError, read_json
from starlette.requests import Request
from starlette.responses import Response

from .responses_input import responses_request
from .responses_output import Event, ResponseBuilder, new_item_id, response_head
from .responses_schema import ResponsesRequest
from .responses_store import ResponseStore, StoredResponse
from .schemas import parse
from .streaming import STREAM_HEADERS


async def create_response(ctx: ServerContext, store: ResponseStore, request: Request) -> Response:
    """Serve one response, streamed or whole."""
    body = parse(ResponsesRequest, await read_json(request))
    if body.background:
        raise InvalidRequestError(
            "background responses are not supported by this server: omit background "
            "(or set it to false), and stream the response to follow its progress",
            "background",
        )
    work = responses_request(body, _history(store, body.previous_response_id))
    keep = body.store is not False and store.enabled
    builder = ResponseBuilder(
        response_head(body, new_item_id("resp"), int(time.time()), keep), work.namespaces,
        show_thinking=work.request.think is not False,
    )

    def save() -> None:
        if keep:
            conversation = (*work.conversation, builder.reply())
            store.put(builder.response["id"], StoredResponse(builder.response, conversation))

    if body.stream:
        generation = await admit(ctx.engine, request, work.request)
        return await stream_response(
            request, generation, ResponseEvents(builder, save), close=generation.aclose,
            headers={**STREAM_HEADERS, **generation.route.headers()},
        )
    generation, reply = await generate_whole(ctx.engine, request, work.request)
    builder.start()
    for event in reply.events:
        builder.feed(event)
    save()
    return JSONResponse(builder.response, headers=generation.route.headers())


async def retrieve_response(store: ResponseStore, response_id: str) -> Response:
    return JSONResponse(_stored(store, response_id).body)


async def delete_response(store: ResponseStore, response_id: str) -> Response:
    _stored(store, response_id)
    store.delete(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


def _stored(store: ResponseStore, response_id: str) -> StoredResponse:
    _require_store(store, "response_id")
    found = store.get(response_id)
    if found is None:
        raise HttpError(
            404, f"no response with id {response_id!r} is stored (it may have expired)",
            code="not_found",
        )
    return found


def _history(store: ResponseStore, previous: str | None) -> tuple[Message, ...]:
    if previous is None:
        return ()
    _require_store(store, "previous_response_id")
    found = store.get(previous)
    if found is None:
        raise InvalidRequestError(
            f"previous response {previous!r} is not stored: it was never stored "
            "(store: false), was deleted, or has expired "
            f"(the server keeps {store.max_entries} responses for at most "
            f"{store.max_age:g} seconds)",
            "previous_response_id",
        )
    return found.conversation


def _require_store(store: ResponseStore, param: str) -> None:
    if not store.enabled:
        raise InvalidRequestError(
            "this server does not store responses (NPU_PROXY_RESPONSES_STORE_SIZE=0): "
            "send the whole conversation as input instead",
            param,
        )


class ResponseEvents(StreamEncoder[GenerationEvent]):
    """The SSE body of a streamed response: ``event: <type>`` and its JSON, per event.

    ``on_done`` runs once the response is complete (to store it)."""

    media_type = EVENT_STREAM

    def __init__(self, builder: ResponseBuilder, on_done: Callable[[], None]) -> None:
        self.builder = builder
        self.on_done = on_done

    def opening(self) -> Iterable[bytes]:
        return _frames(self.builder.start())

    def encode(self, event: GenerationEvent) -> Iterable[bytes]:
        frames = _frames(self.builder.feed(event))
        if isinstance(event, Done):
            self.on_done()
        return frames

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return _frames(self.builder.fail(error))


def _frames(events: list[Event]) -> list[bytes]:
    return [sse_event(event, event=event["type"], ascii_only=True) for event in events]

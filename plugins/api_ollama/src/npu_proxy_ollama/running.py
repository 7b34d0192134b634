"""Running a generation for Ollama: admission, streaming, collection, load and unload.

Contract: the device slot is always released. A client that leaves while queued never
reaches the device; one that leaves mid-stream (or during a non-streamed generation)
cancels the generation at its next token. Errors before the first byte get a status
code; an error after streaming began ends the stream with one ``{"error": ...}`` line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.errors import BackendError, EngineError
from npu_proxy.engine.types import (
    Done,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from npu_proxy.web import ClientDisconnected, until_disconnected
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .encoders import Encoder
from .wire import NDJSONResponse, line, now_rfc3339

#: The status nginx and Ollama log for a request the client abandoned; nobody reads it.
CLIENT_CLOSED = 499


async def respond(
    ctx: ServerContext,
    request: Request,
    generation_request: GenerationRequest,
    encoder: Encoder,
    stream: bool,
) -> Response:
    """Run ``generation_request`` and answer as Ollama: NDJSON chunks or one object."""
    try:
        generation = await until_disconnected(request, ctx.engine.generate(generation_request))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    headers = generation.route.headers()
    if not stream:
        try:
            payload = await until_disconnected(request, _collect(generation, encoder))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            await generation.aclose()
        return JSONResponse(payload, headers=headers)
    events = aiter(generation)
    try:
        # Wait for the first event before sending headers, so a failure in prefill
        # (a prompt the device refuses, a backend error) still gets a real status.
        first = await until_disconnected(request, anext(events))
    except ClientDisconnected:
        await generation.aclose()
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        await generation.aclose()
        raise
    return NDJSONResponse(_stream(generation, events, first, encoder), headers=headers)


async def _collect(generation: Generation, encoder: Encoder) -> dict[str, Any]:
    text: list[str] = []
    calls: list[ToolCall] = []
    async for event in generation:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.append(event.call)
        else:
            return encoder.whole("".join(text), calls, event)
    raise BackendError("the generation ended without a result")


async def _stream(
    generation: Generation,
    events: AsyncIterator[GenerationEvent],
    first: GenerationEvent,
    encoder: Encoder,
) -> AsyncIterator[bytes]:
    async with generation:
        event = first
        try:
            while True:
                payload = encoder.chunk(event)
                if payload is not None:
                    yield line(payload)
                if isinstance(event, Done):
                    return
                event = await anext(events)
        except StopAsyncIteration:
            yield line({"error": "the generation ended without a result"})
        except EngineError as exc:
            yield line({"error": exc.message})


async def load_or_unload(
    ctx: ServerContext,
    request: Request,
    name: str,
    keep_alive: float | None,
    shape: dict[str, Any],
) -> Response:
    """Ollama's empty prompt: load the model, or unload it when ``keep_alive`` is 0.

    ``shape`` is the empty reply field of the endpoint (``response`` or ``message``).
    Ollama answers with one object whether or not the request asked for a stream.
    """
    headers: dict[str, str] = {}
    if keep_alive == 0:
        await ctx.engine.unload(name)
        reason = "unload"
    else:
        try:
            _, route, _ = await until_disconnected(request, ctx.engine.load(name, keep_alive))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        headers = route.headers()
        reason = "load"
    payload = {
        "model": name,
        "created_at": now_rfc3339(),
        **shape,
        "done": True,
        "done_reason": reason,
    }
    return JSONResponse(payload, headers=headers)

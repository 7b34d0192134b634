"""Running a generation for Ollama: streamed or whole, and Ollama's load and unload.

Streaming and collecting are the core's (:mod:`npu_proxy.streaming`): the device slot is
always released, a client that leaves while queued never reaches the device, and one
that leaves mid-stream (or during a reply that is not streamed) cancels the generation
at its next token. Ollama waits for the first event before sending headers, so errors
before the first byte get a status code; an error after streaming began ends the
stream with one ``{"error": ...}`` line.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from npu_proxy.context import ServerContext
from npu_proxy.engine.types import Done, GenerationEvent, GenerationRequest, TextDelta
from npu_proxy.streaming import admit, generate_whole, stream_response
from npu_proxy.web import until_disconnected
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .encoders import Encoder
from .wire import now_rfc3339


async def respond(
    ctx: ServerContext,
    request: Request,
    generation_request: GenerationRequest,
    encoder: Encoder,
    stream: bool,
    on_answer: Callable[[str], Awaitable[None]] | None = None,
) -> Response:
    """Run ``generation_request`` and answer as Ollama: NDJSON chunks or one object.

    ``on_answer`` is awaited with the answer's text once it is complete, before the
    final object is encoded (to add what needs the whole answer to it).
    """
    if not stream:
        generation, reply = await generate_whole(ctx.engine, request, generation_request)
        if on_answer is not None:
            await on_answer(reply.text)
        return JSONResponse(encoder.whole(reply), headers=generation.route.headers())
    generation = await admit(ctx.engine, request, generation_request)
    events = generation if on_answer is None else _before_done(generation, on_answer)
    return await stream_response(
        request, events, encoder, close=generation.aclose,
        headers=generation.route.headers(), wait_first=True,
    )


async def _before_done(
    events: AsyncIterable[GenerationEvent], on_answer: Callable[[str], Awaitable[None]]
) -> AsyncIterator[GenerationEvent]:
    """``events``, with ``on_answer`` awaited on the answer's text before :class:`Done`."""
    answer: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            answer.append(event.text)
        elif isinstance(event, Done):
            await on_answer("".join(answer))
        yield event


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
    headers = await load_model(ctx, request, name, keep_alive)
    payload = {
        "model": name,
        "created_at": now_rfc3339(),
        **shape,
        "done": True,
        "done_reason": "unload" if keep_alive == 0 else "load",
    }
    return JSONResponse(payload, headers=headers)


async def load_model(
    ctx: ServerContext, request: Request, name: str, keep_alive: float | None
) -> dict[str, str]:
    """Load ``name`` for ``keep_alive`` (unload it when 0); the route headers of a load.

    A client that leaves while the model loads ends the request (499).
    """
    if keep_alive == 0:
        await ctx.engine.unload(name)
        return {}
    _, route, _ = await until_disconnected(request, ctx.engine.load(name, keep_alive))
    return route.headers()

"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Bodies are parsed here (not by FastAPI) so every validation error is Anthropic-shaped.
Everything that can fail before generation (validation, model lookup, token count,
prompt too long, full queue) fails with a proper status before the first byte; only
what happens during generation ends a stream with an ``error`` event. Query strings
(``?beta=true``) and the ``anthropic-version``/``anthropic-beta`` headers are accepted
and need no handling: the wire format does not depend on them.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import GenerationRequest
from npu_proxy.streaming import admit, generate_whole, stream_response
from npu_proxy.web import read_json, request_body
from starlette.responses import JSONResponse, Response

from .convert import generation_request
from .encoder import MessageEncoder
from .models import ModelResolver
from .schemas import MessagesRequest, PromptParams, parse
from .settings import AnthropicSettings
from .streaming import MessageStream

if TYPE_CHECKING:
    from npu_proxy.context import ServerContext


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def build_router(ctx: ServerContext, settings: AnthropicSettings) -> APIRouter:
    """The Messages routes over ``ctx``; no state outside this closure."""
    router = APIRouter()
    resolver = ModelResolver(
        ctx.store, settings.model_map, settings.default_model or ctx.settings.default_model
    )

    def headers(generation: Generation) -> dict[str, str]:
        return {**generation.route.headers(), "X-NPU-Proxy-Model": generation.model.name}

    @router.post("/v1/messages", openapi_extra=request_body(MessagesRequest))
    async def create_message(request: Request) -> Response:
        body = parse(MessagesRequest, await read_json(request))
        engine_request = generation_request(body, resolver.resolve(body.model))

        def encoder_for(generation: Generation) -> MessageEncoder:
            return MessageEncoder(new_message_id(), body.model, generation.route.token_count,
                                  engine_request.options.stop,
                                  show_thinking=engine_request.think is not False)

        if body.stream:
            generation = await admit(ctx.engine, request, engine_request)
            return await stream_response(
                request, generation,
                MessageStream(encoder_for(generation), settings.ping_interval),
                close=generation.aclose,
                headers={**headers(generation), "Cache-Control": "no-cache"},
            )
        generation, reply = await generate_whole(ctx.engine, request, engine_request)
        encoder = encoder_for(generation)
        for event in reply.events:
            encoder.feed(event)
        return JSONResponse(encoder.message(), headers=headers(generation))

    @router.post("/v1/messages/count_tokens", openapi_extra=request_body(PromptParams))
    async def count_tokens(request: Request) -> Response:
        body = parse(PromptParams, await read_json(request))
        engine_request: GenerationRequest = generation_request(body, resolver.resolve(body.model))
        tokens = await ctx.engine.count_tokens(engine_request)
        return JSONResponse({"input_tokens": tokens})

    return router

"""``POST /api/generate`` and ``POST /api/chat``: Ollama requests -> GenerationRequest.

A model's stored ``system`` prompt and ``parameters`` (from ``/api/create``) are the
defaults a request overrides. ``/api/generate``'s ``context`` is
:mod:`.continuation`'s. The request's ``template`` is accepted and ignored: the
backend applies the model's own chat template, and Go templates are not executed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import CapabilityError, InvalidRequestError
from npu_proxy.engine.types import (
    Capability,
    GenerationRequest,
    Message,
    ModelInfo,
    ResponseFormat,
    SamplingOptions,
    ThinkLevel,
    ToolCall,
    ToolSpec,
)
from npu_proxy.web import request_body
from starlette.requests import Request
from starlette.responses import Response

from .continuation import context_of, continue_from
from .encoders import ChatEncoder, GenerateEncoder
from .options import (
    decode_images,
    parse_format,
    parse_keep_alive,
    parse_options,
    read_named,
)
from .running import load_or_unload, respond
from .schemas import ChatBody, ChatMessage, CommonBody, GenerateBody

B = TypeVar("B", bound=CommonBody)


def _check_features(info: ModelInfo, body: CommonBody) -> None:
    """Refuse what the model or this server cannot do, as Ollama does, with a 400.
    (Thinking and tools are the engine's one policy for every dialect.)"""
    if body.top_logprobs:
        raise InvalidRequestError(
            "top_logprobs greater than 0 is not supported: the server reports the chosen "
            "token's log-probability only, not the most likely alternatives",
            param="top_logprobs",
        )


def _defaults(info: ModelInfo) -> dict[str, Any]:
    return dict(info.parameters)


def _stored_system(info: ModelInfo) -> str | None:
    return info.system or None


def _message(index: int, message: ChatMessage) -> Message:
    calls = tuple(
        ToolCall(
            id=call.id or f"call_{index}_{n}",
            name=call.function.name,
            arguments=call.function.argument_object(),
        )
        for n, call in enumerate(message.tool_calls or ())
    )
    return Message(
        role=message.role,
        content=message.content or "",
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        tool_name=message.tool_name,
        images=decode_images(message.images, f"messages.{index}.images"),
    )


@dataclass(frozen=True)
class _Common:
    """What /api/generate and /api/chat read alike, in the order Ollama checks it."""

    name: str
    info: ModelInfo
    keep_alive: float | None
    options: SamplingOptions
    response_format: ResponseFormat | None
    think: bool | ThinkLevel | None

    def request(
        self,
        *,
        messages: tuple[Message, ...] | None = None,
        prompt: str | None = None,
        suffix: str | None = None,
        tools: tuple[ToolSpec, ...] = (),
        truncate: bool = False,
    ) -> GenerationRequest:
        """The GenerationRequest of these settings for ``messages`` or a raw ``prompt``."""
        return GenerationRequest(
            model=self.name, messages=messages, prompt=prompt, suffix=suffix, tools=tools,
            options=self.options, response_format=self.response_format,
            keep_alive=self.keep_alive, truncate=truncate, think=self.think,
        )


async def _read(
    ctx: ServerContext, request: Request, schema: type[B]
) -> tuple[B, _Common]:
    body, name = await read_named(request, schema)
    keep_alive = parse_keep_alive(body.keep_alive)
    info = ctx.store.resolve(name)
    options = replace(parse_options(body.options, _defaults(info)), logprobs=bool(body.logprobs))
    return body, _Common(name, info, keep_alive, options, parse_format(body.format), body.think)


def inference_routes(ctx: ServerContext) -> APIRouter:
    """The two generation endpoints, closed over ``ctx``."""
    router = APIRouter()

    @router.post("/api/generate", openapi_extra=request_body(GenerateBody))
    async def generate(request: Request) -> Response:
        body, common = await _read(ctx, request, GenerateBody)
        name, info = common.name, common.info
        images = decode_images(body.images)
        _check_features(info, body)
        if not body.prompt:
            return await load_or_unload(ctx, request, name, common.keep_alive, {"response": ""})
        if body.raw:
            if images:
                if not info.can(Capability.VISION):
                    raise CapabilityError(
                        f'"{info.name}" is a text-only model and does not accept images',
                        param="images",
                    )
                raise InvalidRequestError("images cannot be combined with raw", param="raw")
            generation = common.request(prompt=body.prompt, suffix=body.suffix or None,
                                        truncate=body.truncate is not False)
        else:
            if body.suffix and not info.can(Capability.INSERT):
                raise CapabilityError(f'"{info.name}" does not support insert', param="suffix")
            system = body.system if body.system is not None else _stored_system(info)
            turns = [Message(role="system", content=system)] if system else []
            turns.append(Message(role="user", content=body.prompt, images=images))
            # Ollama keeps the end of a prompt longer than the context (truncate: false
            # refuses it instead); the X-NPU-Proxy-Truncated header counts what was cut.
            generation = common.request(messages=tuple(turns), suffix=body.suffix or None,
                                        truncate=body.truncate is not False)
        encoder = GenerateEncoder(name, show_thinking=body.think is not False)
        stream = body.stream is not False
        if body.raw:  # as Ollama: a raw prompt neither reads nor returns a context
            return await respond(ctx, request, generation, encoder, stream)
        if body.context:
            if images:
                raise InvalidRequestError("images cannot be combined with context",
                                          param="images")
            generation = await continue_from(ctx, info, body.context, generation)
        final = generation

        async def record_context(answer: str) -> None:
            encoder.context = await context_of(ctx, final, answer)

        return await respond(ctx, request, generation, encoder, stream,
                             on_answer=record_context)

    @router.post("/api/chat", openapi_extra=request_body(ChatBody))
    async def chat(request: Request) -> Response:
        body, common = await _read(ctx, request, ChatBody)
        name, info = common.name, common.info
        _check_features(info, body)
        messages = [_message(i, m) for i, m in enumerate(body.messages or ())]
        if not messages:
            shape = {"message": {"role": "assistant", "content": ""}}
            return await load_or_unload(ctx, request, name, common.keep_alive, shape)
        tools = tuple(
            ToolSpec(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters or {"type": "object", "properties": {}},
            )
            for t in body.tools or ()
        )
        system = _stored_system(info)
        if system and not any(m.role == "system" for m in messages):
            messages.insert(0, Message(role="system", content=system))
        generation = common.request(
            messages=tuple(messages),
            tools=tools,
            # Ollama drops the oldest messages of a conversation that outgrew the
            # context unless the client asks for an error instead (truncate: false).
            truncate=body.truncate is not False,
        )
        encoder = ChatEncoder(name, show_thinking=body.think is not False)
        return await respond(ctx, request, generation, encoder, body.stream is not False)

    return router

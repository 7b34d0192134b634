"""``POST /v1/chat/completions``: whole replies (``chat.completion``) and streams of
``chat.completion.chunk`` events that share one id, the role in the first delta, the
finish reason in the last, and (with ``stream_options.include_usage``) a usage chunk
with empty ``choices`` before ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import (
    Done,
    GenerationEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from npu_proxy.web import read_json
from starlette.requests import Request
from starlette.responses import Response

from .errors import stream_failure_body
from .running import (
    Choices,
    Envelope,
    Reply,
    admit,
    choices_usage,
    finish_reason,
    new_id,
    run_all,
    usage_body,
)
from .schemas import ChatCompletionRequest, parse
from .streaming import DONE, EventStreamResponse, sse
from .translate import chat_request, choice_requests


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    """A call as OpenAI writes it: the arguments are a JSON *string*."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


async def create_chat_completion(ctx: ServerContext, request: Request) -> Response:
    """Serve one chat completion with ``n`` choices, streamed or whole."""
    body = parse(ChatCompletionRequest, await read_json(request))
    works = choice_requests(chat_request(body), body.n or 1)
    envelope = Envelope(new_id("chatcmpl"), int(time.time()), body.model)
    if body.stream:
        first = await admit(ctx, request, works[0])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if len(works) == 1:
            events, close = _single(first), first.aclose
        else:
            choices = Choices(ctx, first, works)
            events, close = choices.events(), choices.aclose
        return EventStreamResponse(
            stream_chat(events, len(works), envelope, include_usage), close,
            headers=first.route.headers(),
        )
    generation, replies = await run_all(ctx, request, works)
    return JSONResponse(
        {
            **envelope.head("chat.completion"),
            "choices": [
                {
                    "index": index,
                    "message": _message(reply),
                    "logprobs": None,
                    "finish_reason": finish_reason(reply.done, bool(reply.calls)),
                }
                for index, reply in enumerate(replies)
                if reply.done is not None
            ],
            "usage": usage_body(choices_usage([reply.usage for reply in replies])),
        },
        headers=generation.route.headers(),
    )


def _message(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content when the model answered only with tool calls.
        "content": reply.text if reply.text or not reply.calls else None,
        "refusal": None,
    }
    if reply.calls:
        message["tool_calls"] = [tool_call_body(c) for c in reply.calls]
    return message


async def _single(generation: Generation) -> AsyncIterator[tuple[int, GenerationEvent]]:
    async with generation:
        async for event in generation:
            yield 0, event


async def stream_chat(
    events: AsyncIterator[tuple[int, GenerationEvent]], n: int, envelope: Envelope,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat completion with ``n`` choices, from ``(choice
    index, event)`` pairs: each choice's role first, its finish reason last, then the
    usage of all of them. A failure ends the stream with an error event."""

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            **envelope.head("chat.completion.chunk"),
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            data["usage"] = None  # OpenAI marks every chunk but the last one this way
        return sse(data)

    for index in range(n):
        yield chunk(index, {"role": "assistant", "content": ""})
    calls = [0] * n
    usages: list[Usage] = []
    try:
        async for index, event in events:
            if isinstance(event, TextDelta):
                if event.text:
                    yield chunk(index, {"content": event.text})
            elif isinstance(event, ToolCallDelta):
                yield chunk(index, {"tool_calls": [{"index": calls[index],
                                                    **tool_call_body(event.call)}]})
                calls[index] += 1
            elif isinstance(event, Done):
                usages.append(event.usage)
                yield chunk(index, {}, finish_reason(event, calls[index] > 0))
    except Exception as exc:
        yield sse(stream_failure_body(exc, "a chat completion"))
        return
    if include_usage and usages:
        yield sse({**envelope.head("chat.completion.chunk"), "choices": [],
                   "usage": usage_body(choices_usage(usages))})
    yield DONE

"""``POST /v1/chat/completions``: whole replies (``chat.completion``) and streams of
``chat.completion.chunk`` events that share one id, the role in the first delta, the
finish reason in the last, and (with ``stream_options.include_usage``) a usage chunk
with empty ``choices`` before ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.errors import BackendError, EngineError
from npu_proxy.engine.types import Done, TextDelta, ToolCall, ToolCallDelta
from npu_proxy.web import read_json
from starlette.requests import Request
from starlette.responses import Response

from .errors import engine_error_body
from .running import Envelope, admit, finish_reason, new_id, run, usage_body
from .schemas import ChatCompletionRequest, parse
from .streaming import DONE, EventStreamResponse, sse
from .translate import chat_request

log = logging.getLogger(__name__)


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    """A call as OpenAI writes it: the arguments are a JSON *string*."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


async def create_chat_completion(ctx: ServerContext, request: Request) -> Response:
    """Serve one chat completion, streamed or whole."""
    body = parse(ChatCompletionRequest, await read_json(request))
    work = chat_request(body)
    envelope = Envelope(new_id("chatcmpl"), int(time.time()), body.model)
    if body.stream:
        generation = await admit(ctx, request, work)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(
            stream_chat(generation, envelope, include_usage),
            generation.aclose,
            headers=generation.route.headers(),
        )
    generation, reply = await run(ctx, request, work)
    assert reply.done is not None
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content when the model answered only with tool calls.
        "content": reply.text if reply.text or not reply.calls else None,
        "refusal": None,
    }
    if reply.calls:
        message["tool_calls"] = [tool_call_body(c) for c in reply.calls]
    return JSONResponse(
        {
            **envelope.head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(reply.done, bool(reply.calls)),
                }
            ],
            "usage": usage_body(reply.usage),
        },
        headers=generation.route.headers(),
    )


async def stream_chat(
    generation: Generation, envelope: Envelope, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat completion; a failure ends it with an error event."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            **envelope.head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None  # OpenAI marks every chunk but the last one this way
        return sse(data)

    async with generation:
        yield chunk({"role": "assistant", "content": ""})
        calls = 0
        try:
            async for event in generation:
                if isinstance(event, TextDelta):
                    if event.text:
                        yield chunk({"content": event.text})
                elif isinstance(event, ToolCallDelta):
                    yield chunk({"tool_calls": [{"index": calls, **tool_call_body(event.call)}]})
                    calls += 1
                elif isinstance(event, Done):
                    yield chunk({}, finish_reason(event, calls > 0))
                    if include_usage:
                        yield sse(
                            {
                                **envelope.head("chat.completion.chunk"),
                                "choices": [],
                                "usage": usage_body(event.usage),
                            }
                        )
        except EngineError as exc:
            yield sse(engine_error_body(exc))
            return
        except Exception:
            log.exception("streaming a chat completion failed")
            yield sse(engine_error_body(BackendError("the stream failed")))
            return
    yield DONE

"""``POST /v1/chat/completions``: whole replies (``chat.completion``) and streams of
``chat.completion.chunk`` events that share one id, the role in the first delta, the
finish reason in the last, and (with ``stream_options.include_usage``) a usage chunk
with empty ``choices`` before ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.errors import EngineError, InvalidRequestError
from npu_proxy.engine.types import (
    GenerationEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from npu_proxy.streaming import EVENT_STREAM, Collected, StreamEncoder, admit, stream_response
from npu_proxy.web import read_json
from starlette.requests import Request
from starlette.responses import Response

from .errors import error_body
from .logprobs import chat_logprobs
from .running import (
    Choices,
    Envelope,
    choices_usage,
    finish_reason,
    new_id,
    run_all,
    usage_body,
)
from .schemas import ChatCompletionRequest, parse
from .streaming import DONE, STREAM_HEADERS, sse
from .translate import chat_request, choice_requests


def tool_call_body(call: ToolCall) -> dict[str, Any]:
    """A call as OpenAI writes it: the arguments are a JSON *string*."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


async def create_chat_completion(
    ctx: ServerContext, request: Request, max_choices: int = 8
) -> Response:
    """Serve one chat completion with ``n`` choices (at most ``max_choices``, else a
    400), streamed or whole."""
    body = parse(ChatCompletionRequest, await read_json(request))
    if body.n is not None and body.n > max_choices:
        raise InvalidRequestError(
            f"n must be at most {max_choices} (NPU_PROXY_MAX_CHOICES); got {body.n}", "n")
    works = choice_requests(chat_request(body), body.n or 1)
    envelope = Envelope(new_id("chatcmpl"), int(time.time()), body.model)
    if body.stream:
        first = await admit(ctx.engine, request, works[0])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events: AsyncIterable[tuple[int, GenerationEvent]]
        if len(works) == 1:
            events, close = _single(first), first.aclose
        else:
            choices = Choices(ctx, first, works)
            events, close = choices.events(), choices.aclose
        chunks = ChatChunks(len(works), envelope, include_usage, works[0].think is not False,
                            works[0].options.logprobs)
        return await stream_response(
            request, events, chunks, close=close,
            headers={**STREAM_HEADERS, **first.route.headers()},
        )
    generation, replies = await run_all(ctx, request, works)
    return JSONResponse(
        {
            **envelope.head("chat.completion"),
            "choices": [
                {
                    "index": index,
                    "message": _message(reply, works[0].think is not False),
                    "logprobs": (chat_logprobs(reply.done.logprobs)
                                 if works[0].options.logprobs else None),
                    "finish_reason": finish_reason(reply.done, bool(reply.calls)),
                }
                for index, reply in enumerate(replies)
            ],
            "usage": usage_body(choices_usage([reply.usage for reply in replies])),
        },
        headers=generation.route.headers(),
    )


def _message(reply: Collected, show_thinking: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content when the model answered only with tool calls.
        "content": reply.text if reply.text or not reply.calls else None,
        "refusal": None,
    }
    if show_thinking and reply.thinking:
        # Where vLLM, DeepSeek and llama.cpp put a reasoning model's thinking.
        message["reasoning_content"] = reply.thinking
    if reply.calls:
        message["tool_calls"] = [tool_call_body(c) for c in reply.calls]
    return message


async def _single(generation: Generation) -> AsyncIterator[tuple[int, GenerationEvent]]:
    async with generation:
        async for event in generation:
            yield 0, event


class ChatChunks(StreamEncoder[tuple[int, GenerationEvent]]):
    """The SSE body of a streamed chat completion with ``n`` choices, from ``(choice
    index, event)`` pairs: each choice's role first, its finish reason last, then the
    usage of all of them and ``[DONE]``. A failure ends the stream with an error event.
    With ``logprobs`` each choice's last chunk carries its tokens' log-probabilities.
    Reasoning goes in ``delta.reasoning_content`` (left out with ``show_thinking=False``)."""

    media_type = EVENT_STREAM

    def __init__(
        self, n: int, envelope: Envelope, include_usage: bool, show_thinking: bool = True,
        logprobs: bool = False,
    ) -> None:
        self.n = n
        self.logprobs = logprobs
        self.envelope = envelope
        self.include_usage = include_usage
        self.show_thinking = show_thinking
        self._calls = [0] * n
        self._usages: list[Usage] = []

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: dict[str, Any] | None = None) -> bytes:
        data = {
            **self.envelope.head("chat.completion.chunk"),
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if self.include_usage:
            data["usage"] = None  # OpenAI marks every chunk but the last one this way
        return sse(data)

    def opening(self) -> Iterable[bytes]:
        return [self._chunk(index, {"role": "assistant", "content": ""}) for index in range(self.n)]

    def encode(self, event: tuple[int, GenerationEvent]) -> Iterable[bytes]:
        index, item = event
        if isinstance(item, TextDelta):
            return [self._chunk(index, {"content": item.text})] if item.text else []
        if isinstance(item, ThinkingDelta):
            if not (self.show_thinking and item.text):
                return []
            return [self._chunk(index, {"reasoning_content": item.text})]
        if isinstance(item, ToolCallDelta):
            call = {"index": self._calls[index], **tool_call_body(item.call)}
            self._calls[index] += 1
            return [self._chunk(index, {"tool_calls": [call]})]
        self._usages.append(item.usage)
        logprobs = chat_logprobs(item.logprobs) if self.logprobs else None
        return [self._chunk(index, {}, finish_reason(item, self._calls[index] > 0), logprobs)]

    def closing(self) -> Iterable[bytes]:
        frames = []
        if self.include_usage and self._usages:
            frames.append(sse({**self.envelope.head("chat.completion.chunk"), "choices": [],
                               "usage": usage_body(choices_usage(self._usages))}))
        return [*frames, DONE]

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return [sse(error_body(error))]

"""``POST /v1/completions``: OpenAI's legacy text completions on a raw prompt.

The prompt reaches the model untouched (no chat template). A list of prompts gives one
choice per prompt, generated one after another; ``echo`` puts the prompt in front of
each choice's text. Token-id prompts are refused: the engine takes text only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.errors import CapabilityError, EngineError, InvalidRequestError
from npu_proxy.engine.types import (
    Capability,
    Done,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from npu_proxy.streaming import EVENT_STREAM, StreamEncoder, admit, generate_whole, stream_response
from npu_proxy.web import read_json
from starlette.requests import Request
from starlette.responses import Response

from .errors import error_body
from .logprobs import completion_logprobs, refuse_top_logprobs
from .running import Envelope, finish_reason, new_id, usage_body
from .schemas import CompletionRequest, parse
from .streaming import DONE, STREAM_HEADERS, sse
from .translate import sampling_options


def prompts_of(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The text prompts of a request; token ids and an empty list are refused."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [p for p in prompt if isinstance(p, str)]
    raise InvalidRequestError(
        "prompts given as token ids are not supported: the server cannot turn token ids "
        "back into text for its backends; send the prompt as a string",
        "prompt",
    )


def completion_requests(ctx: ServerContext, body: CompletionRequest) -> list[GenerationRequest]:
    """One engine request per prompt."""
    if body.best_of not in (None, 1):
        raise InvalidRequestError("best_of greater than 1 is not supported", "best_of")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", "stream_options"
        )
    prompts = prompts_of(body.prompt)
    if body.n not in (None, 1):
        raise InvalidRequestError(
            "n greater than 1 is not supported for text completions: request one choice "
            "at a time, or use /v1/chat/completions", "n"
        )
    # The legacy logprobs is a count of alternatives; 0 asks for the chosen tokens only.
    refuse_top_logprobs(body.logprobs, "logprobs")
    if body.logprobs is not None and body.echo:
        raise InvalidRequestError(
            "logprobs with echo is not supported: the server reports the generated "
            "tokens' log-probabilities, not the prompt's", "logprobs"
        )
    options = sampling_options(body, body.max_tokens, body.logprobs is not None)
    if body.suffix:
        model = ctx.store.resolve(body.model)
        if not model.can(Capability.INSERT):
            raise CapabilityError(
                f'"{model.name}" does not support insertion (suffix)', param="suffix"
            )
    return [
        GenerationRequest(model=body.model, prompt=p, suffix=body.suffix or None, options=options)
        for p in prompts
    ]


async def create_completion(ctx: ServerContext, request: Request) -> Response:
    """Serve a text completion, streamed or whole."""
    body = parse(CompletionRequest, await read_json(request))
    works = completion_requests(ctx, body)
    envelope = Envelope(new_id("cmpl"), int(time.time()), body.model)
    if body.stream:
        first = await admit(ctx.engine, request, works[0])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await stream_response(
            request, _prompts(ctx, first, works),
            CompletionChunks(works, envelope, body.echo, include_usage),
            close=first.aclose, headers={**STREAM_HEADERS, **first.route.headers()},
        )
    choices: list[dict[str, Any]] = []
    usages: list[Usage] = []
    headers: dict[str, str] = {}
    for index, work in enumerate(works):
        generation, reply = await generate_whole(ctx.engine, request, work)
        headers = headers or generation.route.headers()
        usages.append(reply.usage)
        choices.append(
            {
                "text": (work.prompt or "") + reply.text if body.echo else reply.text,
                "index": index,
                "logprobs": (completion_logprobs(reply.done.logprobs)
                             if work.options.logprobs else None),
                "finish_reason": finish_reason(reply.done, False),
            }
        )
    return JSONResponse(
        {**envelope.head("text_completion"), "choices": choices, "usage": _total(usages)},
        headers=headers,
    )


def _total(usages: list[Usage]) -> dict[str, Any]:
    return usage_body(
        Usage(
            prompt_tokens=sum(u.prompt_tokens for u in usages),
            completion_tokens=sum(u.completion_tokens for u in usages),
            cached_tokens=sum(u.cached_tokens for u in usages),
        )
    )


async def _prompts(
    ctx: ServerContext, first: Generation, works: list[GenerationRequest]
) -> AsyncIterator[tuple[int, GenerationEvent | None]]:
    """Each prompt's events in turn, as ``(prompt index, event)``; ``None`` marks the
    start of a prompt. ``first`` is already admitted (so its errors got a proper HTTP
    status); the other prompts queue for a device as their turn comes."""
    generation = first
    for index, work in enumerate(works):
        if index:
            generation = await ctx.engine.generate(work)
        async with generation:
            yield index, None
            async for event in generation:
                yield index, event


class CompletionChunks(StreamEncoder[tuple[int, GenerationEvent | None]]):
    """The SSE body: each prompt's chunks in turn (after its echo), the usage, ``[DONE]``;
    a failure ends it with an error event."""

    media_type = EVENT_STREAM

    def __init__(self, works: list[GenerationRequest], envelope: Envelope, echo: bool,
                 include_usage: bool) -> None:
        self.works = works
        self.envelope = envelope
        self.echo = echo
        self.include_usage = include_usage
        self._usages: list[Usage] = []

    def _chunk(self, index: int, text: str, finish: str | None = None,
               logprobs: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            **self.envelope.head("text_completion"),
            "choices": [{"text": text, "index": index, "logprobs": logprobs,
                         "finish_reason": finish}],
        }
        if self.include_usage:
            data["usage"] = None
        return sse(data)

    def encode(self, event: tuple[int, GenerationEvent | None]) -> Iterable[bytes]:
        index, item = event
        if item is None:
            prompt = self.works[index].prompt
            return [self._chunk(index, prompt)] if self.echo and prompt else []
        if isinstance(item, TextDelta):
            return [self._chunk(index, item.text)] if item.text else []
        if isinstance(item, Done):
            self._usages.append(item.usage)
            logprobs = (completion_logprobs(item.logprobs)
                        if self.works[index].options.logprobs else None)
            return [self._chunk(index, "", finish_reason(item, False), logprobs)]
        return []  # a raw prompt offers no tools, so no call can arrive

    def closing(self) -> Iterable[bytes]:
        frames = [sse({**self.envelope.head("text_completion"), "choices": [],
                       "usage": _total(self._usages)})] if self.include_usage else []
        return [*frames, DONE]

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return [sse(error_body(error))]

"""Running generations for the routes: admission, whole replies, and what they report.

Every path holds the generation in ``async with`` so its device slot is freed however
the request ends; :func:`admit` and :func:`run` give up as soon as the client leaves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationRequest,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from npu_proxy.web import until_disconnected
from starlette.requests import Request


@dataclass(frozen=True)
class Envelope:
    """The fields every object of one completion repeats."""

    id: str
    created: int
    model: str

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def new_id(prefix: str) -> str:
    """A response id such as ``chatcmpl-<24 hex>``."""
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass
class Reply:
    """A finished generation: its text, the tool calls it made, and how it ended."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    done: Done | None = None

    @property
    def usage(self) -> Usage:
        assert self.done is not None, "the reply is complete once run() returns"
        return self.done.usage


def finish_reason(done: Done, made_calls: bool) -> str:
    """OpenAI's ``finish_reason``: ``tool_calls`` whenever calls were made."""
    if made_calls:
        return "tool_calls"
    return "length" if done.finish_reason == FinishReason.LENGTH else "stop"


def usage_body(usage: Usage) -> dict[str, int]:
    """OpenAI's ``usage`` object, from the generation's own counts."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


async def admit(ctx: ServerContext, request: Request, work: GenerationRequest) -> Generation:
    """Queue ``work`` for a device; withdrawn if the client leaves while it waits."""
    return await until_disconnected(request, ctx.engine.generate(work))


async def collect(generation: Generation) -> Reply:
    """Run an admitted generation to its end and close it."""
    reply = Reply()
    texts: list[str] = []
    async with generation:
        async for event in generation:
            if isinstance(event, TextDelta):
                texts.append(event.text)
            elif isinstance(event, ToolCallDelta):
                reply.calls.append(event.call)
            elif isinstance(event, Done):
                reply.done = event
    reply.text = "".join(texts)
    return reply


async def run(
    ctx: ServerContext, request: Request, work: GenerationRequest
) -> tuple[Generation, Reply]:
    """Admit and run ``work`` whole; the generation is cancelled if the client leaves."""

    async def both() -> tuple[Generation, Reply]:
        generation = await ctx.engine.generate(work)
        return generation, await collect(generation)

    return await until_disconnected(request, both())

"""Running generations for the routes: ``n`` choices at once, and what they report.

Admission, streaming and collecting one generation are the core's
(:mod:`npu_proxy.streaming`); what is OpenAI's own is running the ``n`` choices of
one request together, whole (:func:`run_all`) or streamed (:class:`Choices`). Every
path frees each device slot however the request ends, and gives up as soon as the
client leaves.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from npu_proxy.context import ServerContext
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Usage,
)
from npu_proxy.streaming import Collected, collect
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


def finish_reason(done: Done, made_calls: bool) -> str:
    """OpenAI's ``finish_reason``: ``tool_calls`` whenever calls were made."""
    if made_calls:
        return "tool_calls"
    return "length" if done.finish_reason == FinishReason.LENGTH else "stop"


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object, from the generation's own counts; prompt tokens read
    from the prefix cache are ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


async def run_all(
    ctx: ServerContext, request: Request, works: list[GenerationRequest]
) -> tuple[Generation, list[Collected]]:
    """Admit and run every request of ``works`` whole, concurrently (a device with free
    slots batches them; one with a single slot serves them in turn). The first
    generation comes back for its route headers. The first failure cancels the others
    and is raised; so does the client leaving."""

    async def one(work: GenerationRequest) -> tuple[Generation, Collected]:
        generation = await ctx.engine.generate(work)
        return generation, await collect(generation)

    async def every() -> list[tuple[Generation, Collected]]:
        tasks = [asyncio.ensure_future(one(work)) for work in works]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    results = await until_disconnected(request, every())
    return results[0][0], [reply for _, reply in results]


def choices_usage(usages: list[Usage]) -> Usage:
    """One request's usage over its choices: the prompt once, every completion."""
    return Usage(
        prompt_tokens=usages[0].prompt_tokens,
        completion_tokens=sum(u.completion_tokens for u in usages),
        cached_tokens=usages[0].cached_tokens,
    )


class Choices:
    """The generations of one streamed request with ``n`` choices, each run by a task
    of its own, their events merged in the order they come.

    ``first`` is already admitted (so its errors got a proper HTTP status); the others
    are admitted by their tasks. :meth:`aclose` cancels what is left and frees every
    slot, however far the tasks got.
    """

    def __init__(self, ctx: ServerContext, first: Generation,
                 works: list[GenerationRequest]) -> None:
        self._first = first
        self._queue: asyncio.Queue[tuple[int, GenerationEvent | Exception | None]] = (
            asyncio.Queue())
        self._tasks = [asyncio.ensure_future(self._run(i, ctx, work))
                       for i, work in enumerate(works)]

    async def _run(self, index: int, ctx: ServerContext, work: GenerationRequest) -> None:
        try:
            generation = self._first if index == 0 else await ctx.engine.generate(work)
            async with generation:
                async for event in generation:
                    self._queue.put_nowait((index, event))
        except Exception as exc:
            self._queue.put_nowait((index, exc))
        else:
            self._queue.put_nowait((index, None))

    async def events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """(choice index, event) until every choice is done; a choice's failure raises."""
        running = len(self._tasks)
        while running:
            index, item = await self._queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._first.aclose()  # its task may have been cancelled before it began

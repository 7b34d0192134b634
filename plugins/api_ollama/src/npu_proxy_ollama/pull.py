"""``POST /api/pull``: downloads through the core's puller, reported as Ollama's progress.

The reply is the puller's progress as NDJSON lines (``pulling manifest``, ``pulling
<digest12>`` with ``digest``/``total``/``completed``, ``verifying sha256 digest``,
``writing manifest``, ``success``). The route waits until the hub has listed the model
before it answers, so a bad name (400) or a model the hub does not have (404) is an
HTTP error in Ollama's shape; anything that fails later ends the stream with one
``{"error": ...}`` line. A client that leaves cancels the download, and the puller then
removes its partial files.

Models already in the store that the hub cannot provide (the embedded default, the
mock's models, models made with ``create``) answer with the progress of a complete
model, as a pull of an up-to-date model does in Ollama.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import (
    EngineError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerStoppingError,
)
from npu_proxy.engine.formats import RemoteFile
from npu_proxy.engine.names import parse_model_name
from npu_proxy.engine.types import ModelInfo
from npu_proxy.hub.pull import PullPhase, PullProgress
from npu_proxy.streaming import NDJSON, ClosingStreamResponse
from npu_proxy.web import read_json, request_body, until_disconnected, validate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field
from .schemas import StrictBody
from .wire import digest_hex, line

log = logging.getLogger(__name__)

Progress = AsyncGenerator[PullProgress, None]

#: Phases sent before the hub has answered; the route holds them back until then.
_BEFORE_LISTING = frozenset({PullPhase.LISTING})
#: Ollama's status line for each phase of a pull (downloads name their layer instead).
_STATUS = {
    PullPhase.LISTING: "pulling manifest",
    PullPhase.VERIFYING: "verifying sha256 digest",
    PullPhase.INSTALLING: "writing manifest",
    PullPhase.DONE: "success",
}


def describe_progress(progress: PullProgress) -> dict[str, Any]:
    """The Ollama JSON form of a progress message (absent fields omitted).

    A download is ``pulling <first 12 hex digits of its digest>`` with ``digest``,
    ``total`` and ``completed``; every other phase is a bare ``status``.
    """
    remote = progress.file
    if progress.phase is not PullPhase.DOWNLOADING or remote is None:
        return {"status": _STATUS[progress.phase]}
    return {
        "status": f"pulling {remote.digest.split(':', 1)[1][:12]}",
        "digest": remote.digest,
        "total": remote.size,
        "completed": progress.completed or 0,
    }


class UnknownModelError(EngineError):
    """A pull of a name nobody can provide (404 with the given message)."""

    status = 404
    code = "model_not_found"


class PullBody(StrictBody):
    """``insecure`` (and Ollama's registry credentials) are accepted and ignored: pulls
    always go over the configured Hugging Face endpoint."""

    model: str | None = None
    name: str | None = None
    stream: bool | None = None
    insecure: bool | None = None
    username: str | None = None
    password: str | None = None


class PullStream:
    """A pull driven by its own task, read through :meth:`next`.

    The puller's iterator cleans up (waits for its download thread, removes partial
    files, frees the store lock) when it is cancelled. Inside a streamed response the
    reading task is cancelled again at every await (Starlette's task group), which would
    cut that clean-up short; a separate task is cancelled exactly once, by :meth:`aclose`.
    """

    def __init__(self, progress: Progress) -> None:
        self._queue: asyncio.Queue[PullProgress | Exception | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(progress))
        self._ended = False

    async def _pump(self, progress: Progress) -> None:
        try:
            async for event in progress:
                self._queue.put_nowait(event)
        except EngineError as exc:
            self._queue.put_nowait(exc)
        except Exception as exc:
            log.exception("pull failed")
            self._queue.put_nowait(exc)
        self._queue.put_nowait(None)

    async def next(self) -> PullProgress | None:
        """The next message, or None at the end; a failure is raised (EngineError as is)."""
        if self._ended:
            return None
        item = await self._queue.get()
        if item is None or isinstance(item, Exception):
            self._ended = True
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the pull (if still running) and wait until it has cleaned up."""
        self._ended = True
        self._task.cancel()
        await asyncio.wait([self._task])


class PullLines:
    """The NDJSON body: the held-back first messages, then the rest as they come.

    A failure after the stream began becomes a final ``{"error": ...}`` line.
    :meth:`aclose` stops the pull even if the body never started.
    """

    def __init__(self, head: list[PullProgress], stream: PullStream) -> None:
        self._head = list(head)
        self._stream = stream

    def __aiter__(self) -> PullLines:
        return self

    async def __anext__(self) -> bytes:
        if self._head:
            return line(describe_progress(self._head.pop(0)))
        try:
            event = await self._stream.next()
        except EngineError as exc:
            return line({"error": exc.message})
        except Exception:
            return line({"error": "pull failed"})
        if event is None:
            raise StopAsyncIteration
        return line(describe_progress(event))

    async def aclose(self) -> None:
        await self._stream.aclose()


async def stored_progress(info: ModelInfo) -> Progress:
    """The progress of a pull of a model that is already complete in the store."""
    yield PullProgress(PullPhase.LISTING)
    if info.digest:
        layer = RemoteFile(info.name, info.size, digest_hex(info), "")
        yield PullProgress(PullPhase.DOWNLOADING, layer, info.size)
    yield PullProgress(PullPhase.VERIFYING)
    yield PullProgress(PullPhase.INSTALLING)
    yield PullProgress(PullPhase.DONE)


def start_pull(ctx: ServerContext, name: str) -> Progress:
    """The progress of pulling ``name``: from the hub, or of a stored model it cannot provide.

    Raises InvalidRequestError for a bad name and UnknownModelError (404) for a plain
    name that is neither a pull alias nor in the store.
    """
    parsed = parse_model_name(name)  # refuse unsafe names before anything else
    try:
        if ctx.puller is not None:
            ctx.puller.resolve(name)
    except InvalidRequestError as exc:
        try:
            return stored_progress(ctx.store.resolve(name))
        except ModelNotFoundError:
            if parsed.namespace is None:
                # A valid plain name the catalog does not know: "not found", and the
                # core's message lists the aliases that do exist.
                raise UnknownModelError(exc.message) from None
            raise exc from None
    if ctx.puller is None:
        try:
            return stored_progress(ctx.store.resolve(name))
        except ModelNotFoundError:
            raise UnknownModelError("pull model manifest: file does not exist") from None
    return ctx.puller.pull(name)


async def until_listed(stream: PullStream) -> PullLines:
    """Read ``stream`` until the hub has listed the model; errors so far propagate.

    Any exit other than a normal return (an error, a client that left) stops the pull.
    """
    head: list[PullProgress] = []
    try:
        while not head or head[-1].phase in _BEFORE_LISTING:
            event = await stream.next()
            if event is None:
                break
            head.append(event)
    except BaseException:
        await stream.aclose()
        raise
    return PullLines(head, stream)


async def run_to_end(stream: PullStream) -> dict[str, Any]:
    """Consume ``stream`` and return the last message; errors propagate with their status."""
    last: PullProgress | None = None
    try:
        while (event := await stream.next()) is not None:
            last = event
    finally:
        await stream.aclose()
    return describe_progress(last) if last is not None else {"status": "success"}


def pull_routes(ctx: ServerContext) -> APIRouter:
    """``POST /api/pull``, closed over ``ctx``."""
    router = APIRouter()

    @router.post("/api/pull", openapi_extra=request_body(PullBody))
    async def pull(request: Request) -> Response:
        data = await read_json(request)
        body = validate(PullBody, data)
        stream = PullStream(start_pull(ctx, model_field(data)))
        if body.stream is False:
            return JSONResponse(await until_disconnected(request, run_to_end(stream)))
        lines = await until_disconnected(request, until_listed(stream))
        return ClosingStreamResponse(lines, media_type=NDJSON, stopped=lambda: [
            line({"error": ServerStoppingError().message})])

    return router

"""Helpers every dialect needs: reading a JSON body, validating it, noticing when the
client has gone while a request waits for a device (answered with the one
:data:`CLIENT_CLOSED` status), and :class:`HttpError` for errors the web layer raises
itself. Streaming and collecting generations are in :mod:`npu_proxy.streaming`.

Dialects parse their own bodies (instead of FastAPI's body parameters) so that every
error, validation included, is rendered in the dialect's own shape.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .engine.errors import EngineError, InvalidRequestError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


#: The status of a request the client abandoned (nginx's and Ollama's "client closed
#: request"); nobody reads it, but the access log and the metrics show why it ended.
CLIENT_CLOSED = 499


class ClientDisconnected(Exception):
    """The client closed the connection before the response began (answered with
    :data:`CLIENT_CLOSED` by the app)."""


class HttpError(EngineError):
    """An error the web layer answers by itself (401, 403, 404, 405, 413, 500, ...),
    rendered like an engine error by the dialect that owns the path.

    ``code`` may be empty: the error has no engine code, and a dialect that needs one
    derives it from the status.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON; :class:`InvalidRequestError` if it is empty or malformed."""
    body = await request.body()
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"invalid JSON in request body: {exc}") from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """A one-line message for the first problem and the parameter it concerns."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"{loc} is required", loc or None
    return (f"invalid value for {loc}: {message}" if loc else message), loc or None


def validate(model: type[M], data: Any) -> M:
    """``model.model_validate(data)``, with errors as :class:`InvalidRequestError`."""
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequestError(message, param=param) from None


async def json_off_loop(
    build: Callable[[], Any], headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response whose content ``build()`` makes, made and encoded in a worker thread.

    For bodies that take long to build or encode, such as thousands of embedding
    vectors. The encoder runs piece by piece (:func:`encode_json`), so the event loop
    gets the interpreter back within a switch interval and ``/health`` keeps answering
    meanwhile (a single ``json.dumps`` call would hold it to the end). The bytes are
    those :class:`~starlette.responses.JSONResponse` sends.
    """
    body = await asyncio.to_thread(lambda: encode_json(build()))
    return Response(body, media_type="application/json", headers=dict(headers or {}))


def encode_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (object keys must be strings; no NaN), encoded one
    leaf at a time: a list of plain values (a vector) or a single value per call."""
    pieces: list[str] = []
    _encode(value, pieces)
    return "".join(pieces).encode("utf-8")


def _encode(value: Any, pieces: list[str]) -> None:
    if isinstance(value, dict):
        pieces.append("{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            pieces.append(("," if index else "") + _dumps(key) + ":")
            _encode(item, pieces)
        pieces.append("}")
    elif isinstance(value, list | tuple) and value and isinstance(value[0], dict | list | tuple):
        pieces.append("[")
        for index, item in enumerate(value):
            if index:
                pieces.append(",")
            _encode(item, pieces)
            # Hand the interpreter over at once (not only each switch interval), so a
            # waiting event loop answers within a piece's time, not 5 ms per wake-up.
            time.sleep(0)
        pieces.append("]")
    else:
        pieces.append(_dumps(value))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it and raise).

    Use it around :meth:`Engine.generate` so a client that leaves while queued never
    reaches the device. The body must already have been read.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        raise ClientDisconnected() from None
    # The work finished just as the client left: release whatever it holds.
    closer = getattr(result, "aclose", None)
    if closer is not None:
        await closer()
    raise ClientDisconnected()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

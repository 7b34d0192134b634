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
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from itertools import accumulate
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


#: Deepest nesting of arrays and objects a request body may have (serde_json's limit):
#: far beyond any real request, far below what recursive code on the value survives.
MAX_JSON_DEPTH = 128
#: Most digits of an integer in a request body: far beyond any value a parameter takes
#: (a 64-bit value has 20 digits; an over-long keep_alive still means "forever"), and
#: below Python's own conversion limit (4,300 digits), which raises ``ValueError``.
MAX_JSON_INT_DIGITS = 1000

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


async def read_json(request: Request) -> Any:
    """The request body as JSON; :class:`InvalidRequestError` if it is empty, malformed,
    nested deeper than :data:`MAX_JSON_DEPTH` or holds an integer of more than
    :data:`MAX_JSON_INT_DIGITS` digits."""
    body = await request.body()
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object")
    return parse_json(body)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON within the limits of :func:`read_json` (same errors)."""
    if json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"invalid JSON in request body: {exc}") from None
    except ValueError:  # from _bounded_int
        raise InvalidRequestError(
            f"invalid JSON in request body: an integer has more than {MAX_JSON_INT_DIGITS} "
            "digits") from None
    except RecursionError:  # the depth scan leaves this to a body it misread
        raise InvalidRequestError(
            f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (brackets inside strings do
    not count), or 0 for a body with too few brackets to pass :data:`MAX_JSON_DEPTH`
    (counted at C speed; the exact scan is linear too)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than the limit; the exact figure is not needed
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_BRACKET_STEP[b] for b in brackets), default=0)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError("integer too long")
    return int(text)


#: Where :func:`request_body` leaves the schemas a body refers to, for
#: :func:`complete_openapi` to move into the document's components.
_SCHEMAS_KEY = "x-npu-proxy-schemas"
_COMPONENTS = "#/components/schemas/"


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body :func:`validate` (or a dialect's own
    parser) checks against ``model``: the schema ``/openapi.json`` shows for it.

    Schemas are named after the dialect's package (``openai.ChatCompletionRequest``,
    ``anthropic.Message``) so two dialects' ``Message`` never clash. Apply
    :func:`complete_openapi` to the generated document (``create_app`` does).
    """
    package = model.__module__.split(".")[0].removeprefix("npu_proxy_")
    schema = model.model_json_schema(mode="validation")
    defs = {f"{package}.{name}": sub for name, sub in schema.pop("$defs", {}).items()}
    defs[f"{package}.{model.__name__}"] = schema
    for sub in defs.values():
        _rename_refs(sub, package)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {
                "schema": {"$ref": f"{_COMPONENTS}{package}.{model.__name__}"}}},
        },
        _SCHEMAS_KEY: defs,
    }


def _rename_refs(node: Any, package: str) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = f"{_COMPONENTS}{package}.{ref.removeprefix('#/$defs/')}"
        for value in node.values():
            _rename_refs(value, package)
    elif isinstance(node, list):
        for value in node:
            _rename_refs(value, package)


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Finish a generated OpenAPI document (in place; returns it): move the schemas
    :func:`request_body` left on operations into ``components.schemas``, and declare
    the path parameters of routes whose handlers read them from the request (a
    ``{model_id}`` in the path and no parameter for it)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in document.get("paths", {}).items():
        names = re.findall(r"{([^}:]+)(?::[^}]*)?}", path)
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            components.update(operation.pop(_SCHEMAS_KEY, {}))
            declared = {p.get("name") for p in operation.get("parameters", [])
                        if p.get("in") == "path"}
            for name in names:
                if name not in declared:
                    operation.setdefault("parameters", []).append(
                        {"name": name, "in": "path", "required": True,
                         "schema": {"type": "string", "minLength": 1}})
    return document


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

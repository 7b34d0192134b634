"""``POST /api/create``: make a model from uploaded files, a local file or folder, or
another model.

Ollama's ``files`` maps file names to the digests of blobs uploaded first
(``/api/blobs``): what the ``ollama`` CLI sends for ``FROM ./model.gguf`` and the Python
client's ``create(files=...)`` after ``create_blob``. The model store lays the files out
under those names (one file is the model, several the files of one model folder), the
registered formats say what they are, and deleting the model deletes them. ``from``
names either an existing model (the new one shares its files and overrides
``template``, ``system`` and ``parameters``) or an absolute path on this machine, which
the store imports where it is (deleting the model never deletes it); ``files`` values
may be such paths too. Error messages never echo a path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.blobs import is_digest
from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError
from npu_proxy.engine.formats import ModelFormatError
from npu_proxy.engine.names import canonical
from npu_proxy.engine.types import ModelInfo
from npu_proxy.streaming import NDJSON, ClosingStreamResponse
from npu_proxy.web import read_json, request_body, validate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field, parse_options
from .schemas import StrictBody
from .wire import line


class CreateBody(StrictBody):
    model: str | None = None
    name: str | None = None
    from_: str | None = None
    files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Any] | None = None
    adapters: dict[str, str] | None = None
    quantize: str | None = None
    modelfile: str | None = None
    stream: bool | None = None


def _bad_path() -> InvalidRequestError:
    return InvalidRequestError(
        "from must name a model, or a model file or folder on the server (an absolute path)",
        param="from",
    )


def _source_path(body: CreateBody) -> Path | None:
    """The local path the request points at, or ``None`` when ``from`` is not a path.

    A ``files`` mapping of one entry names that file; of several, the folder they share.
    """
    if body.files:
        paths = []
        for value in body.files.values():
            if not Path(value).is_absolute():
                raise InvalidRequestError(
                    "files must map names to blob digests (sha256:..., uploaded to "
                    "/api/blobs) or to absolute paths on the server",
                    param="files",
                )
            paths.append(Path(value))
        if len(paths) == 1:
            return paths[0]
        folder = Path(os.path.commonpath(paths))
        if any(p.parent != folder for p in paths):
            raise InvalidRequestError(
                "files must be one model file, or the files of one folder", param="files"
            )
        return folder
    if body.from_ and Path(body.from_).is_absolute():
        return Path(body.from_)
    return None


def _customised(info: ModelInfo, body: CreateBody) -> ModelInfo:
    """``info`` with what the request sets: template, system prompt, parameters, license."""
    if body.template is not None:
        info = replace(info, template=body.template)
    if body.system is not None:
        info = replace(info, system=body.system)
    if body.parameters is not None:
        info = replace(info, parameters=dict(body.parameters))
    if body.license is not None:
        text = body.license if isinstance(body.license, str) else "\n".join(body.license)
        info = replace(info, license=text)
    return info


async def _progress(digest: str) -> AsyncIterator[bytes]:
    yield line({"status": "parsing model metadata"})
    yield line({"status": f"using existing layer sha256:{digest}"})
    yield line({"status": "writing manifest"})
    yield line({"status": "success"})


def _created(info: ModelInfo, body: CreateBody) -> Response:
    if body.stream is False:
        return JSONResponse({"status": "success"})
    return ClosingStreamResponse(
        _progress(info.digest.removeprefix("sha256:")), media_type=NDJSON
    )


def create_routes(ctx: ServerContext) -> APIRouter:
    """``POST /api/create``, closed over ``ctx``."""
    router = APIRouter()

    @router.post("/api/create", openapi_extra=request_body(CreateBody))
    async def create(request: Request) -> Response:
        data = await read_json(request)
        if isinstance(data, dict) and "from" in data:
            data = {**data, "from_": data["from"]}
        body = validate(CreateBody, data)
        name = canonical(model_field(data))
        for field, what in (
            ("quantize", "quantization"),
            ("adapters", "adapters"),
            ("messages", "stored messages"),
        ):
            if getattr(body, field):
                raise InvalidRequestError(f"{what} are not supported by create", param=field)
        if not body.from_ and not body.files:
            raise InvalidRequestError(
                "from is required: a model name, or a model file or folder on the server",
                param="from",
            )
        if body.parameters is not None:
            parse_options(body.parameters)  # refuse a wrong type now, not at every request
        blobs = body.files or {}
        if blobs and all(is_digest(v) for v in blobs.values()):
            try:
                info = await ctx.store.aimport_blobs(
                    blobs, name, adjust=lambda found: _customised(found, body)
                )
            except ModelFormatError as exc:  # files no format reads, or unusable ones
                raise InvalidRequestError(exc.message, param="files") from None
            return _created(info, body)
        path = _source_path(body)
        if path is not None:
            try:
                info = await ctx.store.aimport_path(
                    path, name, adjust=lambda found: _customised(found, body)
                )
            except ModelFormatError as exc:  # files no format reads, or unusable ones
                raise InvalidRequestError(exc.message, param="from") from None
            except InvalidRequestError:  # no such file or folder
                raise _bad_path() from None
        else:
            try:
                parent = ctx.store.resolve(body.from_)
            except ModelNotFoundError:
                raise _bad_path() from None
            info = replace(parent, name=name, modified_at=datetime.now(UTC), source=parent.name)
            info = await ctx.store.awrite(_customised(info, body))
        return _created(info, body)

    return router

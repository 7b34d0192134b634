"""``POST /api/embed`` and the older ``POST /api/embeddings``.

``/api/embed`` takes a string or a list of strings and returns every vector with
measured durations; no input just loads the model (Ollama's behaviour). The legacy
endpoint takes one ``prompt`` and returns ``{"embedding": [...]}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import EmbeddingRequest
from npu_proxy.web import read_json, until_disconnected, validate
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field, parse_keep_alive, parse_options
from .schemas import StrictBody


class EmbedBody(StrictBody):
    model: str | None = None
    name: str | None = None
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = Field(None, gt=0)
    options: Any = None
    keep_alive: Any = None


class EmbeddingsBody(StrictBody):
    model: str | None = None
    name: str | None = None
    prompt: str | None = None
    options: Any = None
    keep_alive: Any = None


def _inputs(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    raise InvalidRequestError("input must be a string or a list of strings", param="input")


def embedding_routes(ctx: ServerContext) -> APIRouter:
    """The embedding endpoints, closed over ``ctx``."""
    router = APIRouter()

    async def load(request: Request, name: str, keep_alive: float | None) -> dict[str, str]:
        if keep_alive == 0:
            await ctx.engine.unload(name)
            return {}
        _, route, _ = await until_disconnected(request, ctx.engine.load(name, keep_alive))
        return route.headers()

    @router.post("/api/embed")
    async def embed(request: Request) -> Response:
        data = await read_json(request)
        body = validate(EmbedBody, data)
        name = model_field(data)
        keep_alive = parse_keep_alive(body.keep_alive)
        parse_options(body.options)  # validated for type errors; nothing applies to embeddings
        inputs = _inputs(body.input)
        if not inputs:
            ctx.store.resolve(name)
            headers = await load(request, name, keep_alive)
            return JSONResponse({"model": name, "embeddings": []}, headers=headers)
        work = EmbeddingRequest(
            model=name,
            inputs=inputs,
            truncate=body.truncate is not False,
            dimensions=body.dimensions,
            keep_alive=keep_alive,
        )
        result = await until_disconnected(request, ctx.engine.embed(work))
        payload = {
            "model": name,
            "embeddings": result.result.vectors,
            "total_duration": result.result.total_duration,
            "load_duration": result.result.load_duration,
            "prompt_eval_count": result.result.prompt_tokens,
        }
        return JSONResponse(payload, headers=result.route.headers())

    @router.post("/api/embeddings")
    async def embeddings(request: Request) -> Response:
        data = await read_json(request)
        body = validate(EmbeddingsBody, data)
        name = model_field(data)
        keep_alive = parse_keep_alive(body.keep_alive)
        parse_options(body.options)
        if not body.prompt:
            ctx.store.resolve(name)
            headers = await load(request, name, keep_alive)
            return JSONResponse({"embedding": []}, headers=headers)
        work = EmbeddingRequest(model=name, inputs=(body.prompt,), keep_alive=keep_alive)
        result = await until_disconnected(request, ctx.engine.embed(work))
        return JSONResponse({"embedding": result.result.vectors[0]}, headers=result.route.headers())

    return router

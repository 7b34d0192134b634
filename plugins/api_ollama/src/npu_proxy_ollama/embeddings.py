"""``POST /api/embed`` and the older ``POST /api/embeddings``.

``/api/embed`` takes a string or a list of strings and returns every vector with
measured durations; no input just loads the model (Ollama's behaviour). The legacy
endpoint takes one ``prompt`` and returns ``{"embedding": [...]}``. A request that names
no model uses the server's default embedding model (``NPU_PROXY_EMBEDDING_MODEL``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import EmbeddingRequest
from npu_proxy.web import ClientDisconnected, read_json, until_disconnected, validate
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field, parse_keep_alive, parse_options
from .running import CLIENT_CLOSED
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


def _named_model(data: Any) -> str | None:
    """The model the request names, or None for the server's default embedding model."""
    if data.get("model") in (None, "") and data.get("name") in (None, ""):
        return None
    return model_field(data)


def embedding_routes(ctx: ServerContext) -> APIRouter:
    """The embedding endpoints, closed over ``ctx``."""
    router = APIRouter()

    async def run(request: Request, embedding: EmbeddingRequest) -> Any:
        try:
            return await until_disconnected(request, ctx.engine.embed(embedding))
        except ClientDisconnected:
            return None

    async def load(request: Request, name: str | None, keep_alive: float | None
                   ) -> tuple[str, dict[str, str]]:
        name = name or ctx.engine.embedding_model().name
        ctx.store.resolve(name)
        if keep_alive == 0:
            await ctx.engine.unload(name)
            return name, {}
        _, route, _ = await until_disconnected(request, ctx.engine.load(name, keep_alive))
        return name, route.headers()

    @router.post("/api/embed")
    async def embed(request: Request) -> Response:
        data = await read_json(request)
        body = validate(EmbedBody, data)
        name = _named_model(data)
        keep_alive = parse_keep_alive(body.keep_alive)
        parse_options(body.options)  # validated for type errors; nothing applies to embeddings
        inputs = _inputs(body.input)
        if not inputs:
            try:
                loaded, headers = await load(request, name, keep_alive)
            except ClientDisconnected:
                return Response(status_code=CLIENT_CLOSED)
            return JSONResponse({"model": loaded, "embeddings": []}, headers=headers)
        result = await run(
            request,
            EmbeddingRequest(
                model=name,
                inputs=inputs,
                truncate=body.truncate is not False,
                dimensions=body.dimensions,
                keep_alive=keep_alive,
            ),
        )
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        payload = {
            "model": name or result.model.name,
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
        name = _named_model(data)
        keep_alive = parse_keep_alive(body.keep_alive)
        parse_options(body.options)
        if not body.prompt:
            try:
                _, headers = await load(request, name, keep_alive)
            except ClientDisconnected:
                return Response(status_code=CLIENT_CLOSED)
            return JSONResponse({"embedding": []}, headers=headers)
        result = await run(
            request, EmbeddingRequest(model=name, inputs=(body.prompt,), keep_alive=keep_alive)
        )
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse({"embedding": result.result.vectors[0]}, headers=result.route.headers())

    return router

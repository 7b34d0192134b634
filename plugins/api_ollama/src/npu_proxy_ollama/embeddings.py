"""``POST /api/embed`` and the older ``POST /api/embeddings``.

``/api/embed`` takes a string or a list of strings and returns every vector with
measured durations; no input just loads the model (Ollama's behaviour). The legacy
endpoint takes one ``prompt`` and returns ``{"embedding": [...]}``. A request that names
no model uses the server's default embedding model (``NPU_PROXY_EMBEDDING_MODEL``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import EmbeddingRequest
from npu_proxy.web import json_off_loop, read_json, request_body, until_disconnected, validate
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field, parse_keep_alive, parse_options
from .running import load_model
from .schemas import StrictBody


class _ModelBody(StrictBody):
    model: str | None = None
    name: str | None = None
    options: Any = None
    keep_alive: Any = None


class EmbedBody(_ModelBody):
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = Field(None, gt=0)


class EmbeddingsBody(_ModelBody):
    prompt: str | None = None


B = TypeVar("B", bound=_ModelBody)


async def _read(request: Request, schema: type[B]) -> tuple[B, str | None, float | None]:
    """The body, the model it names (None: the default embedding model) and its keep_alive."""
    data = await read_json(request)
    body = validate(schema, data)
    name = None if data.get("model") in (None, "") and data.get("name") in (None, "") else (
        model_field(data)
    )
    keep_alive = parse_keep_alive(body.keep_alive)
    parse_options(body.options)  # validated for type errors; nothing applies to embeddings
    return body, name, keep_alive


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

    async def load_only(request: Request, name: str, keep_alive: float | None,
                        payload: dict[str, Any]) -> Response:
        """No input: load (or unload) the model, as Ollama does."""
        ctx.store.resolve(name)
        headers = await load_model(ctx, request, name, keep_alive)
        return JSONResponse(payload, headers=headers)

    @router.post("/api/embed", openapi_extra=request_body(EmbedBody))
    async def embed(request: Request) -> Response:
        body, named, keep_alive = await _read(request, EmbedBody)
        name = named or ctx.engine.embedding_model().name
        inputs = _inputs(body.input)
        if not inputs:
            return await load_only(request, name, keep_alive, {"model": name, "embeddings": []})
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
        # Thousands of vectors take long to encode: off the event loop.
        return await json_off_loop(lambda: payload, result.route.headers())

    @router.post("/api/embeddings", openapi_extra=request_body(EmbeddingsBody))
    async def embeddings(request: Request) -> Response:
        body, named, keep_alive = await _read(request, EmbeddingsBody)
        name = named or ctx.engine.embedding_model().name
        if not body.prompt:
            return await load_only(request, name, keep_alive, {"embedding": []})
        work = EmbeddingRequest(model=name, inputs=(body.prompt,), keep_alive=keep_alive)
        result = await until_disconnected(request, ctx.engine.embed(work))
        return JSONResponse({"embedding": result.result.vectors[0]}, headers=result.route.headers())

    return router

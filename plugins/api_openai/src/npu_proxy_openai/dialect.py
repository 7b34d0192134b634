"""The OpenAI dialect: its routes under ``/v1`` and its error shape for every error there.

Handlers read and validate their own bodies, so validation errors come out in OpenAI's
shape too. Every error under ``/v1`` (the engine's, with the parameter it concerns, and
the web layer's) is rendered by :meth:`OpenAIApi.error_response`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from npu_proxy.api import ApiDialect
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import EngineError
from starlette.requests import Request
from starlette.responses import Response

from . import chat, completions, embeddings, models
from .errors import error_response

Handler = Callable[[Request], Awaitable[Response]]


class OpenAIApi(ApiDialect):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``."""

    name = "openai"
    prefixes = ("/v1",)

    def router(self, ctx: ServerContext) -> APIRouter:
        router = APIRouter(tags=["openai"])

        async def chat_completions(request: Request) -> Response:
            return await chat.create_chat_completion(ctx, request)

        async def text_completions(request: Request) -> Response:
            return await completions.create_completion(ctx, request)

        async def create_embeddings(request: Request) -> Response:
            return await embeddings.create_embeddings(ctx, request)

        async def list_models(request: Request) -> Response:
            return await models.list_models(ctx)

        async def retrieve_model(request: Request) -> Response:
            return await models.retrieve_model(ctx, request.path_params["model_id"])

        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/chat/completions", chat_completions),
            ("POST", "/v1/completions", text_completions),
            ("POST", "/v1/embeddings", create_embeddings),
            ("GET", "/v1/models", list_models),
            # ":path" because ids such as "hf.co/org/repo:tag" contain slashes.
            ("GET", "/v1/models/{model_id:path}", retrieve_model),
        ]
        for method, path, handler in routes:
            router.add_api_route(path, handler, methods=[method])
        return router

    def error_response(self, error: EngineError) -> Response:
        return error_response(error)

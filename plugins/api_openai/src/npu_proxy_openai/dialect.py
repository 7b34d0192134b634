"""The OpenAI dialect: its routes under ``/v1`` and its error shape for every error there.

Handlers read and validate their own bodies, so validation errors come out in OpenAI's
shape too. Engine errors are rendered here rather than by the app's generic handler,
because OpenAI's error object names the offending parameter and the generic handler
does not carry it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from npu_proxy.api import ApiDialect
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import EngineError
from npu_proxy.web import ClientDisconnected
from starlette.requests import Request
from starlette.responses import Response

from . import chat, completions, embeddings, models
from .errors import engine_error_response, error_response

Handler = Callable[[Request], Awaitable[Response]]

# A status no client will see (the connection is gone); nginx's name for it.
CLIENT_CLOSED_REQUEST = 499


def answering_errors(handler: Handler) -> Handler:
    """Wrap a route so engine errors become OpenAI errors, keeping their ``param``."""

    @functools.wraps(handler)
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except EngineError as exc:
            return engine_error_response(exc)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

    return route


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
            router.add_api_route(path, answering_errors(handler), methods=[method])
        return router

    def error_response(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        return error_response(status, message, code=code, headers=headers)

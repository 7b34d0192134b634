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
from npu_proxy.settings import load_plugin_settings
from npu_proxy.web import request_body
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from . import chat, completions, embeddings, models, responses
from .errors import error_response
from .responses_schema import ResponsesRequest
from .responses_store import ResponseStore
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest
from .settings import OpenAISettings

Handler = Callable[[Request], Awaitable[Response]]


class OpenAIApi(ApiDialect):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``,
    ``/v1/embeddings``, ``/v1/models``.

    :param settings: the dialect's options; read from ``NPU_PROXY_*`` when omitted.
    """

    name = "openai"
    prefixes = ("/v1",)

    def __init__(self, settings: OpenAISettings | None = None) -> None:
        self.settings = settings or load_plugin_settings(OpenAISettings)

    def router(self, ctx: ServerContext) -> APIRouter:
        router = APIRouter(tags=["openai"])
        # One store per app: responses never leak from one app (or test) to another.
        store = ResponseStore(
            self.settings.responses_store_size, self.settings.responses_store_ttl
        )

        async def chat_completions(request: Request) -> Response:
            return await chat.create_chat_completion(ctx, request, self.settings.max_choices)

        async def text_completions(request: Request) -> Response:
            return await completions.create_completion(ctx, request)

        async def create_response(request: Request) -> Response:
            return await responses.create_response(ctx, store, request)

        async def retrieve_response(request: Request) -> Response:
            return await responses.retrieve_response(store, request.path_params["response_id"])

        async def delete_response(request: Request) -> Response:
            return await responses.delete_response(store, request.path_params["response_id"])

        async def create_embeddings(request: Request) -> Response:
            return await embeddings.create_embeddings(ctx, request)

        async def list_models(request: Request) -> Response:
            return await models.list_models(ctx)

        async def retrieve_model(request: Request) -> Response:
            return await models.retrieve_model(ctx, request.path_params["model_id"])

        # (method, path, handler, the body it validates: documented in /openapi.json)
        routes: list[tuple[str, str, Handler, type[BaseModel] | None]] = [
            ("POST", "/v1/chat/completions", chat_completions, ChatCompletionRequest),
            ("POST", "/v1/completions", text_completions, CompletionRequest),
            ("POST", "/v1/responses", create_response, ResponsesRequest),
            ("GET", "/v1/responses/{response_id}", retrieve_response, None),
            ("DELETE", "/v1/responses/{response_id}", delete_response, None),
            ("POST", "/v1/embeddings", create_embeddings, EmbeddingsRequest),
            ("GET", "/v1/models", list_models, None),
            # ":path" because ids such as "hf.co/org/repo:tag" contain slashes.
            ("GET", "/v1/models/{model_id:path}", retrieve_model, None),
        ]
        for method, path, handler, body in routes:
            router.add_api_route(path, handler, methods=[method],
                                 openapi_extra=request_body(body) if body else None)
        return router

    def error_response(self, error: EngineError) -> Response:
        return error_response(error)

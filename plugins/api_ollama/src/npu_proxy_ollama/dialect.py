"""The Ollama dialect: its routes under ``/api`` (plus ``GET|HEAD /``).

Ollama's error shape is ``{"error": message}`` with no code on the wire: the default of
:meth:`ApiDialect.error_response`.
"""

from __future__ import annotations

from fastapi import APIRouter
from npu_proxy.api import ApiDialect
from npu_proxy.context import ServerContext

from .blobs import BLOBS_PREFIX, blob_routes
from .create import create_routes
from .embeddings import embedding_routes
from .inference import inference_routes
from .management import management_routes
from .pull import pull_routes


class OllamaApi(ApiDialect):
    """Ollama's HTTP API, as its official clients, Open WebUI and Continue use it.

    Only ``/api`` is claimed as a prefix: ``/`` would capture every other dialect's
    errors. ``GET|HEAD /`` is still served (it is how clients detect Ollama).
    """

    name = "ollama"
    prefixes = ("/api",)
    uploads = (BLOBS_PREFIX,)

    def router(self, ctx: ServerContext) -> APIRouter:
        router = APIRouter()
        for part in (
            inference_routes(ctx),
            embedding_routes(ctx),
            management_routes(ctx),
            create_routes(ctx),
            blob_routes(ctx),
            pull_routes(ctx),
        ):
            router.include_router(part)
        return router

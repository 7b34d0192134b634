"""The API-dialect contract: what a front-end plugin (Ollama, OpenAI, Anthropic) provides.

A dialect owns a set of URL prefixes, builds a FastAPI router over the server's
:class:`~npu_proxy.context.ServerContext`, and renders every error for its paths in its
own wire shape, including errors raised by the core's middleware (401, 403, 413) and
for unknown routes under its prefixes.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import APIRouter
    from starlette.responses import Response

    from .context import ServerContext


class ApiDialect(abc.ABC):
    """An API dialect. Register instances through ``npu_proxy_register_api``.

    ``prefixes`` are the path prefixes whose errors this dialect renders; the longest
    matching prefix across all dialects wins (``/v1/messages`` beats ``/v1``).
    """

    name: str
    prefixes: tuple[str, ...] = ()

    @abc.abstractmethod
    def router(self, ctx: ServerContext) -> APIRouter:
        """Build the routes. Called once per app; close over ``ctx``, keep no globals."""

    @abc.abstractmethod
    def error_response(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Render an error in this dialect's shape (``code`` is an engine error code)."""

"""The API-dialect contract: what a front-end plugin (Ollama, OpenAI, Anthropic) provides.

A dialect owns a set of URL prefixes, builds a FastAPI router over the server's
:class:`~npu_proxy.context.ServerContext`, and renders every error for its paths in its
own wire shape, including errors raised by the core's middleware (401, 403, 413) and
for unknown routes under its prefixes. Its streamed replies go through
:func:`npu_proxy.streaming.stream_response`, so a dialect only encodes events.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from .engine.errors import EngineError

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .context import ServerContext


class ApiDialect(abc.ABC):
    """An API dialect. Register instances through ``npu_proxy_register_api``.

    ``prefixes`` are the path prefixes whose errors this dialect renders; the longest
    matching prefix across all dialects wins (``/v1/messages`` beats ``/v1``).
    """

    name: str
    prefixes: tuple[str, ...] = ()
    #: Path prefixes whose routes stream their request body under their own size limit
    #: (file uploads): the core neither buffers those bodies nor applies
    #: ``NPU_PROXY_MAX_BODY`` to them.
    uploads: tuple[str, ...] = ()

    @abc.abstractmethod
    def router(self, ctx: ServerContext) -> APIRouter:
        """Build the routes. Called once per app; close over ``ctx``, keep no globals."""

    def error_response(self, error: EngineError) -> Response:
        """Render ``error`` in this dialect's shape.

        ``error`` carries the HTTP status, a machine-readable ``code`` (empty for an
        :class:`~npu_proxy.web.HttpError` without one), the ``message``, the ``param``
        it concerns (when known) and the ``headers`` the response must carry (such as
        ``Retry-After``). The default is the plain ``{"error": message}`` body.
        """
        return plain_error_response(error)


def plain_error_response(error: EngineError) -> Response:
    """``{"error": message}`` with the error's status and headers."""
    return JSONResponse({"error": error.message}, status_code=error.status,
                        headers=error.headers)

"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

Status codes follow Anthropic's documented table. A full queue becomes
``529 overloaded_error`` as on the real API: the SDK maps 529 to ``OverloadedError``,
retries it (it retries every status >= 500) and honours ``Retry-After``; Claude Code
shows it as "overloaded" and backs off.
"""

from __future__ import annotations

from typing import Any

from npu_proxy.engine.errors import EngineError
from starlette.responses import JSONResponse

OVERLOADED_STATUS = 529

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    OVERLOADED_STATUS: "overloaded_error",
}

# Engine codes that mean "try again shortly" rather than "this server is broken".
_OVERLOADED_CODES = frozenset({"busy", "loading"})


def wire_status(status: int, code: str = "") -> int:
    """The HTTP status Anthropic clients expect for an engine ``status``/``code``."""
    if code in _OVERLOADED_CODES:
        return OVERLOADED_STATUS
    return status


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for a (wire) status."""
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """The error object for a (wire) ``status``."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_event(error: EngineError) -> dict[str, Any]:
    """The body, or the ``error`` stream event, for an engine or web-layer error."""
    return error_body(wire_status(error.status, error.code), error.message)


def error_response(error: EngineError) -> JSONResponse:
    """The JSON error response for ``error``, with the status Anthropic clients expect."""
    status = wire_status(error.status, error.code)
    return JSONResponse(error_body(status, error.message), status_code=status,
                        headers=error.headers)

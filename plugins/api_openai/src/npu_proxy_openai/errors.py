"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

The official SDKs read ``type``, ``param`` and ``code`` from that object and choose the
exception class from the HTTP status, so both have to follow OpenAI's conventions:
client mistakes are ``invalid_request_error`` (a missing model too, with code
``model_not_found``), server trouble is ``server_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.engine.errors import BackendError, EngineError
from starlette.responses import Response

log = logging.getLogger(__name__)

# Engine codes whose OpenAI spelling differs; the rest pass through unchanged.
_CODES: dict[str, str | None] = {
    "invalid_request": None,  # OpenAI leaves ``code`` null for most bad requests
    "prompt_too_long": "context_length_exceeded",
    "unsupported_capability": "unsupported_value",
    "internal_error": None,
    "unauthorized": "invalid_api_key",
    "too_large": "request_too_large",
}

# Codes for errors the core raises without an engine code (auth, host check, size).
_STATUS_CODES: dict[int, str] = {
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status (a bad API key is ``invalid_request_error``
    there too, with code ``invalid_api_key``)."""
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    status: int, message: str, *, code: str = "", param: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error (also sent as the last event of a failed stream)."""
    mapped = _CODES.get(code, code) if code else _STATUS_CODES.get(status)
    return {
        "error": {
            "message": message,
            "type": error_type(status),
            "param": param,
            "code": mapped,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    code: str = "",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error response in OpenAI's shape."""
    return JSONResponse(
        error_body(status, message, code=code, param=param),
        status_code=status,
        headers=headers,
    )


def engine_error_body(exc: EngineError) -> dict[str, Any]:
    """The body for an engine error, keeping the parameter it concerns."""
    return error_body(exc.status, exc.message, code=exc.code, param=_param(exc))


def stream_failure_body(exc: Exception, what: str) -> dict[str, Any]:
    """The error event that ends a stream ``what`` (e.g. "a chat completion") broken by
    ``exc``: an engine error as it is; anything else logged and told only as failed."""
    if isinstance(exc, EngineError):
        return engine_error_body(exc)
    log.error("streaming %s failed", what, exc_info=exc)
    return engine_error_body(BackendError("the stream failed"))


def engine_error_response(exc: EngineError) -> Response:
    """The response for an engine error; a busy server adds ``Retry-After``."""
    headers = None
    if exc.status == 503:
        headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
    return error_response(
        exc.status, exc.message, code=exc.code, param=_param(exc), headers=headers
    )


def _param(exc: EngineError) -> str | None:
    param = getattr(exc, "param", None)
    if param is None and exc.code == "model_not_found":
        return "model"
    return param if isinstance(param, str) else None

"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

The official SDKs read ``type``, ``param`` and ``code`` from that object and choose the
exception class from the HTTP status, so both have to follow OpenAI's conventions:
client mistakes are ``invalid_request_error`` (a missing model too, with code
``model_not_found``), server trouble is ``server_error``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.engine.errors import EngineError
from starlette.responses import Response

# Engine codes whose OpenAI spelling differs; the rest pass through unchanged.
_CODES: dict[str, str | None] = {
    "invalid_request": None,  # OpenAI leaves ``code`` null for most bad requests
    "prompt_too_long": "context_length_exceeded",
    "unsupported_capability": "unsupported_value",
    "internal_error": None,
    "unauthorized": "invalid_api_key",
    "too_large": "request_too_large",
}

# Codes for errors the web layer raises without an engine code (an HttpError: auth,
# host check, size, unknown route).
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


def error_body(error: EngineError) -> dict[str, Any]:
    """The JSON body of ``error`` (also the last event of a stream it broke)."""
    code = _CODES.get(error.code, error.code) if error.code else _STATUS_CODES.get(error.status)
    return {
        "error": {
            "message": error.message,
            "type": error_type(error.status),
            "param": _param(error),
            "code": code,
        }
    }


def error_response(error: EngineError) -> Response:
    """``error`` in OpenAI's shape, keeping the parameter it concerns; a 503 always
    says when to retry (``Retry-After``, one second unless the error knows better)."""
    headers = error.headers
    if error.status == 503:
        headers.setdefault("Retry-After", "1")
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


def _param(error: EngineError) -> str | None:
    if error.param is None and error.code == "model_not_found":
        return "model"
    return error.param

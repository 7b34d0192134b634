"""Errors the engine raises; each dialect turns them into its own error shape.

Every message is safe to show a client: no paths, no tracebacks, no secrets.
``status`` is the HTTP status a dialect should use unless its protocol says otherwise.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``code`` is a stable machine-readable name."""

    status: int = 500
    code: str = "internal_error"
    #: the request parameter the error concerns, when there is one
    param: str | None = None
    #: seconds after which the same request may succeed, when that is known
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Headers the error response carries (``Retry-After`` when it is known)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class InvalidRequestError(EngineError):
    """The request cannot be served as asked (bad value, unsupported feature)."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(EngineError):
    """No model of that name; never answered with a different model."""

    status = 404
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class CapabilityError(InvalidRequestError):
    """The model exists but cannot do this (embed with a chat model, images to text-only)."""

    code = "unsupported_capability"


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit any device that could run it; names both numbers."""

    code = "prompt_too_long"

    def __init__(self, tokens: int, limit: int, where: str) -> None:
        super().__init__(
            f"prompt is {tokens} tokens, more than the {limit} tokens {where} accepts"
        )
        self.tokens = tokens
        self.limit = limit


class BusyError(EngineError):
    """The device queue is full; try again after ``retry_after`` seconds."""

    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoDeviceError(EngineError):
    """No present device can run the request."""

    status = 503
    code = "no_device"


class ModelLoadError(EngineError):
    """Loading the model failed on every device that was tried."""

    status = 500
    code = "load_failed"


class InferenceTimeoutError(EngineError):
    """The generation ran past ``NPU_PROXY_INFERENCE_TIMEOUT``."""

    status = 504
    code = "timeout"


class BackendError(EngineError):
    """The device failed during generation."""

    status = 500
    code = "backend_error"


class ModelStoreError(EngineError):
    """A model-store operation failed (copy onto itself, delete a built-in, disk full)."""

    status = 400
    code = "store_error"


class ServerStoppingError(EngineError):
    """The server is stopping and ended the request (past its grace period)."""

    status = 503
    code = "server_stopping"

    def __init__(self, message: str = "the server is stopping") -> None:
        super().__init__(message)

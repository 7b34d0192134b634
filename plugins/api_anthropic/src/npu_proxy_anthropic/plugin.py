"""Entry point ``anthropic`` (group ``npu_proxy.api``): the Anthropic Messages dialect."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from npu_proxy.api import ApiDialect
from npu_proxy.engine.errors import EngineError
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings
from starlette.responses import Response

from .errors import error_response
from .routes import build_router
from .settings import AnthropicSettings

if TYPE_CHECKING:
    from fastapi import APIRouter
    from npu_proxy.context import ServerContext


class AnthropicApi(ApiDialect):
    """``/v1/messages`` as Claude Code and the ``anthropic`` SDKs speak it.

    :param settings: the dialect's options; read from ``NPU_PROXY_ANTHROPIC_*`` when
        omitted (an invalid value fails startup with pydantic's message).
    """

    name = "anthropic"
    prefixes = ("/v1/messages",)

    def __init__(self, settings: AnthropicSettings | None = None) -> None:
        # Values come from the environment, which mypy's pydantic view cannot see.
        self.settings = settings or AnthropicSettings()  # type: ignore[call-arg]

    def router(self, ctx: ServerContext) -> APIRouter:
        return build_router(ctx, self.settings)

    def error_response(self, error: EngineError) -> Response:
        return error_response(error)


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None], settings: Settings) -> None:
    register(AnthropicApi())

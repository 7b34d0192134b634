"""Entry point ``openai`` (group ``npu_proxy.api``): the OpenAI-compatible API under ``/v1``."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.api import ApiDialect
from npu_proxy.hookspecs import hookimpl

from .dialect import OpenAIApi


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None]) -> None:
    register(OpenAIApi())

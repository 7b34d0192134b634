"""Entry point ``ollama`` (group ``npu_proxy.api``): registers the Ollama dialect."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.api import ApiDialect
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings

from .dialect import OllamaApi


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None], settings: Settings) -> None:
    register(OllamaApi())

"""Entry point ``openai`` (group ``npu_proxy.api``): the OpenAI-compatible API under ``/v1``."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.api import ApiDialect
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import load_plugin_settings

from .dialect import OpenAIApi
from .settings import OpenAISettings


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None]) -> None:
    # Read here so an invalid NPU_PROXY_RESPONSES_* value stops startup, naming it.
    register(OpenAIApi(load_plugin_settings(OpenAISettings)))

"""Entry point ``ollama`` (group ``npu_proxy.api``): registers the Ollama dialect and the
model commands that speak it (``npu-proxy pull``, ``list``, ``run``, ...)."""

from __future__ import annotations

from collections.abc import Callable

import click
from npu_proxy.api import ApiDialect
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings

from .dialect import OllamaApi


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None], settings: Settings) -> None:
    register(OllamaApi())


@hookimpl
def npu_proxy_register_commands(register: Callable[[click.Command], None]) -> None:
    """Register the model commands; their HTTP client is imported only when one runs."""
    from .cli import COMMANDS

    for command in COMMANDS:
        register(command)

"""Entry point ``jsonl`` (group ``npu_proxy.metrics``).

Registers a :class:`JsonlSink` writing to ``NPU_PROXY_JSONL_PATH``; registers nothing
when that variable is unset or empty, so installing the plugin costs nothing by default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from npu_proxy.engine.events import MetricsSink
from npu_proxy.hookspecs import hookimpl
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .sink import JsonlSink


class JsonlSettings(BaseSettings):
    """The plugin's own variables, read from ``NPU_PROXY_JSONL_*``."""

    model_config = SettingsConfigDict(env_prefix="NPU_PROXY_JSONL_", extra="ignore")

    # A string, not a Path: an empty value must mean "off", and Path("") is ".".
    path: str = Field("", description="File to append event lines to; empty: off.")


@hookimpl
def npu_proxy_register_metrics_sinks(register: Callable[[MetricsSink], None]) -> None:
    path = JsonlSettings().path.strip()
    if not path:
        return
    try:
        sink = JsonlSink(Path(path).expanduser())
    except OSError as exc:
        raise ValueError(
            f"cannot open NPU_PROXY_JSONL_PATH={path} for appending: {exc.strerror}"
        ) from None
    register(sink)

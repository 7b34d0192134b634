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

from .sink import DEFAULT_QUEUE_SIZE, DEFAULT_RETRY_AFTER, JsonlSink


class JsonlSettings(BaseSettings):
    """The plugin's own variables, read from ``NPU_PROXY_JSONL_*``."""

    model_config = SettingsConfigDict(env_prefix="NPU_PROXY_JSONL_", extra="ignore")

    # A string, not a Path: an empty value must mean "off", and Path("") is ".".
    path: str = Field("", description="File to append event lines to; empty: off.")
    queue_size: int = Field(
        DEFAULT_QUEUE_SIZE, ge=1,
        description="Lines waiting for the writer before further events are dropped.")
    retry_after: float = Field(
        DEFAULT_RETRY_AFTER, ge=0,
        description="Seconds after a failed write (a full disk) before writing is tried again.")


@hookimpl
def npu_proxy_register_metrics_sinks(register: Callable[[MetricsSink], None]) -> None:
    settings = JsonlSettings()
    path = settings.path.strip()
    if not path:
        return
    try:
        sink = JsonlSink(Path(path).expanduser(), queue_size=settings.queue_size,
                         retry_after=settings.retry_after)
    except OSError as exc:
        raise ValueError(
            f"cannot open NPU_PROXY_JSONL_PATH={path} for appending: {exc.strerror}"
        ) from None
    register(sink)

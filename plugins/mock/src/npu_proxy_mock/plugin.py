"""Entry point ``mock`` (group ``npu_proxy.backends``): the simulated backend and models.

Registered only when ``NPU_PROXY_REAL_INFERENCE=0``; the mock then serves every model
(its own ``mock:latest`` and ``mock-embed:latest`` and any other listed model).
``NPU_PROXY_MOCK_TOKEN_DELAY`` sets the seconds between streamed pieces.
"""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.engine.backend import Backend
from npu_proxy.engine.types import ModelInfo
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .backend import MockBackend, mock_models


class MockSettings(BaseSettings):
    """The mock's own knobs, read from ``NPU_PROXY_MOCK_*``."""

    model_config = SettingsConfigDict(env_prefix="NPU_PROXY_MOCK_", extra="ignore")

    token_delay: float = Field(0.02, ge=0, description="Seconds between streamed pieces.")
    device: str = Field("MOCK", description="Device name the mock reports.")


@hookimpl
def npu_proxy_register_backends(register: Callable[[Backend], None], settings: Settings) -> None:
    if settings.real_inference:
        return
    mock = MockSettings()
    register(
        MockBackend(
            device=mock.device.upper(),
            name="mock",
            token_delay=mock.token_delay,
            max_parallel=settings.max_parallel,
        )
    )


@hookimpl
def npu_proxy_register_models(register: Callable[[ModelInfo], None], settings: Settings) -> None:
    if settings.real_inference:
        return
    for model in mock_models():
        register(model)

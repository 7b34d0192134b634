"""The OpenAI dialect's own settings, read from ``NPU_PROXY_*`` when it registers."""

from __future__ import annotations

from npu_proxy.settings import PluginSettings
from pydantic import Field


class OpenAISettings(PluginSettings):
    """Field ``x`` is read from ``NPU_PROXY_X``."""

    responses_store_size: int = Field(
        100,
        ge=0,
        description="Responses kept in memory for previous_response_id and "
        "GET /v1/responses/{id} (the oldest go first); 0 turns the store off.",
    )
    responses_store_ttl: float = Field(
        3600.0, gt=0, description="Seconds a stored response is kept."
    )
    max_choices: int = Field(
        8,
        ge=1,
        description="The most choices (n) one chat completion may ask for; more is a 400. "
        "Each choice is a whole generation holding a device slot: 8 is twice the default "
        "parallelism of a CPU or GPU (NPU_PROXY_MAX_PARALLEL), so one request cannot fill "
        "a device queue.",
    )

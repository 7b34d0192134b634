"""The Intel NPU backend: static shapes, one model and one generation at a time.

The NPU compiles a model for a fixed prompt length (``MAX_PROMPT_LEN``) and a minimum
answer length (``MIN_RESPONSE_LEN``). A longer prompt is refused by OpenVINO, and past
about 2k tokens has produced garbage without an error (openvino.genai#3255), so this
backend reports the limit to routing (:meth:`NpuBackend.prompt_limit`) and refuses a
longer prompt itself before it reaches the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import ENV_PREFIX, Settings
from npu_proxy_openvino import EmbeddingPipelineFactory, OpenVINOBackend, PipelineFactory
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NpuSettings(BaseSettings):
    """NPU-only options (``NPU_PROXY_NPU_*``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "NPU_", extra="ignore")

    generate_hint: Literal["FAST_COMPILE", "BEST_PERF"] = Field(
        "BEST_PERF",
        description="GENERATE_HINT: BEST_PERF decodes faster; FAST_COMPILE compiles faster.",
    )


class NpuBackend(OpenVINOBackend):
    """``openvino-npu``: ``max_parallel=1``, ``max_loaded_models=1``, no embeddings."""

    embeddings = False

    def __init__(
        self,
        settings: Settings,
        *,
        npu_settings: NpuSettings | None = None,
        pipeline_factory: PipelineFactory | None = None,
        embedding_factory: EmbeddingPipelineFactory | None = None,
        core_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            settings,
            name="openvino-npu",
            device="NPU",
            max_parallel=1,
            max_loaded_models=1,
            pipeline_factory=pipeline_factory,
            embedding_factory=embedding_factory,
            core_factory=core_factory,
        )
        self.npu_settings = npu_settings or NpuSettings()

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """The compile-time limits, the compile cache and the generate hint.

        ``CACHE_DIR`` turns the 80-130 s cold compile into seconds on the next start.
        """
        return {
            "MAX_PROMPT_LEN": self.settings.max_prompt_len,
            "MIN_RESPONSE_LEN": self.settings.min_response_len,
            "CACHE_DIR": str(self.device_cache_dir()),
            "GENERATE_HINT": self.npu_settings.generate_hint,
        }

    def prompt_limit(self, model: ModelInfo) -> int | None:
        """``MAX_PROMPT_LEN``, capped by the model's own context."""
        return min(self.settings.max_prompt_len, model.context_length)

    def context_limit(self, model: ModelInfo) -> int:
        """The KV cache the NPU compiles: prompt plus minimum response length."""
        return min(
            model.context_length, self.settings.max_prompt_len + self.settings.min_response_len
        )

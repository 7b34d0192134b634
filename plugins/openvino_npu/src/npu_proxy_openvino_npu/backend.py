"""The Intel NPU backend: static shapes, one model and one generation at a time.

The NPU compiles a model for a fixed prompt length (``MAX_PROMPT_LEN``) and a minimum
answer length (``MIN_RESPONSE_LEN``). A longer prompt is refused by OpenVINO, and past
about 2k tokens has produced garbage without an error (openvino.genai#3255), so this
backend reports the limit to routing (:meth:`NpuBackend.prompt_limit`) and refuses a
longer prompt itself before it reaches the device.
"""

from __future__ import annotations

from typing import Any, Literal, Unpack

from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import PluginSettings, Settings, load_plugin_settings
from npu_proxy_openvino import OpenVINOBackend
from npu_proxy_openvino.backend import BackendOptions
from pydantic import Field


class NpuSettings(PluginSettings):
    """What the NPU is compiled for (``NPU_PROXY_MAX_PROMPT_LEN``,
    ``NPU_PROXY_MIN_RESPONSE_LEN``, ``NPU_PROXY_NPU_GENERATE_HINT``,
    ``NPU_PROXY_NPU_PREFIX_CACHING``)."""

    max_prompt_len: int = Field(
        4096, ge=64, description="Prompt tokens the NPU is compiled for (MAX_PROMPT_LEN)."
    )
    min_response_len: int = Field(
        128, ge=1, description="Response tokens the NPU is compiled for (MIN_RESPONSE_LEN)."
    )
    npu_generate_hint: Literal["FAST_COMPILE", "BEST_PERF"] = Field(
        "BEST_PERF",
        description="GENERATE_HINT: BEST_PERF decodes faster; FAST_COMPILE compiles faster.",
    )
    npu_prefix_caching: bool = Field(
        False,
        description="NPUW_LLM_ENABLE_PREFIX_CACHING: the NPU pipeline keeps the KV blocks of "
        "earlier prompts and reuses them for a prompt that starts the same way. Off, as in "
        "OpenVINO, until bench/agent_loop.py shows a gain on an NPU (docs/performance.md).",
    )


class NpuBackend(OpenVINOBackend):
    """``openvino-npu``: one stream, one resident model, no embeddings.

    ``npu_settings`` defaults to :class:`NpuSettings` read from the environment.
    """

    name = "openvino-npu"
    device = "NPU"
    embeddings = False
    max_loaded_models = 1
    prompt_limit_setting = "NPU_PROXY_MAX_PROMPT_LEN"

    def __init__(self, settings: Settings, *, npu_settings: NpuSettings | None = None,
                 **options: Unpack[BackendOptions]) -> None:
        super().__init__(settings, **options)
        self.npu_settings = npu_settings or load_plugin_settings(NpuSettings)

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """The compile-time limits, the compile cache, the generate hint and prefix caching.

        ``CACHE_DIR`` turns the 80-130 s cold compile into seconds on the next start.
        Prefix caching is always stated (``YES``/``NO``), so the setting's default is
        what runs whatever OpenVINO's own default becomes.
        """
        return {
            "MAX_PROMPT_LEN": self.npu_settings.max_prompt_len,
            "MIN_RESPONSE_LEN": self.npu_settings.min_response_len,
            "CACHE_DIR": str(self.device_cache_dir()),
            "GENERATE_HINT": self.npu_settings.npu_generate_hint,
            "NPUW_LLM_ENABLE_PREFIX_CACHING": "YES" if self.npu_settings.npu_prefix_caching
            else "NO",
        }

    def prompt_limit(self, model: ModelInfo) -> int | None:
        """``MAX_PROMPT_LEN``, capped by the model's own context."""
        return min(self.npu_settings.max_prompt_len, model.context_length)

    def context_limit(self, model: ModelInfo) -> int:
        """The KV cache the NPU compiles: prompt plus minimum response length."""
        limits = self.npu_settings
        return min(model.context_length, limits.max_prompt_len + limits.min_response_len)

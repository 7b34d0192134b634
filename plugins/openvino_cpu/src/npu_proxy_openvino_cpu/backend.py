"""The CPU backend: real inference everywhere OpenVINO runs, the fallback of last resort."""

from __future__ import annotations

from typing import Any

from npu_proxy.engine.types import ModelInfo
from npu_proxy_openvino import OpenVINOBackend
from npu_proxy_openvino.batching import EXACT_CPU_NUMERICS


class CpuBackend(OpenVINOBackend):
    """``openvino-cpu``: dynamic shapes, the model's whole context, no compile cache.

    ``max_parallel`` is ``NPU_PROXY_MAX_PARALLEL``: a ``ContinuousBatchingPipeline``
    serves that many streams at once (1 with ``NPU_PROXY_CONTINUOUS_BATCHING=0``).
    ``CACHE_DIR`` is not set: measured here, it gave no gain on CPU.
    """

    name = "openvino-cpu"
    device = "CPU"
    continuous_batching = True

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """Exact numerics: a batched answer or embedding is the one it would be alone."""
        return dict(EXACT_CPU_NUMERICS)

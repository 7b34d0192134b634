"""The Intel GPU backend: dynamic shapes, a compile cache so restarts take seconds."""

from __future__ import annotations

from typing import Any

from npu_proxy.engine.types import ModelInfo
from npu_proxy_openvino import OpenVINOBackend


class GpuBackend(OpenVINOBackend):
    """``openvino-gpu``: compiles with ``CACHE_DIR`` under the model path.

    The first compile of a model takes 20-30 s; with the cache the next start loads the
    compiled blob. ``NPU_PROXY_MAX_PARALLEL`` streams at once through continuous
    batching, as on the CPU.
    """

    name = "openvino-gpu"
    device = "GPU"
    continuous_batching = True

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """``CACHE_DIR``: compiled kernels survive restarts."""
        return {"CACHE_DIR": str(self.device_cache_dir())}

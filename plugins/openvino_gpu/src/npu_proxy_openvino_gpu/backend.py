"""The Intel GPU backend: dynamic shapes, a compile cache so restarts take seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import Settings
from npu_proxy_openvino import (
    BatchingPipelineFactory,
    EmbeddingPipelineFactory,
    OpenVINOBackend,
    OpenVINOSettings,
    PipelineFactory,
)
from npu_proxy_openvino.settings import device_parallel


class GpuBackend(OpenVINOBackend):
    """``openvino-gpu``: compiles with ``CACHE_DIR`` under the model path.

    The first compile of a model takes 20-30 s; with the cache the next start loads the
    compiled blob. ``NPU_PROXY_MAX_PARALLEL`` streams at once through continuous
    batching, as on the CPU.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ov_settings: OpenVINOSettings | None = None,
        pipeline_factory: PipelineFactory | None = None,
        batching_factory: BatchingPipelineFactory | None = None,
        embedding_factory: EmbeddingPipelineFactory | None = None,
        core_factory: Callable[[], Any] | None = None,
    ) -> None:
        ov_settings = ov_settings or OpenVINOSettings()
        super().__init__(
            settings,
            name="openvino-gpu",
            device="GPU",
            max_parallel=device_parallel(settings, ov_settings, "GPU"),
            batching=True,
            ov_settings=ov_settings,
            pipeline_factory=pipeline_factory,
            batching_factory=batching_factory,
            embedding_factory=embedding_factory,
            core_factory=core_factory,
        )

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """``CACHE_DIR``: compiled kernels survive restarts."""
        return {"CACHE_DIR": str(self.device_cache_dir())}

"""The CPU backend: real inference everywhere OpenVINO runs, the fallback of last resort."""

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
from npu_proxy_openvino.batching import EXACT_CPU_NUMERICS
from npu_proxy_openvino.settings import device_parallel


class CpuBackend(OpenVINOBackend):
    """``openvino-cpu``: dynamic shapes, the model's whole context, no compile cache.

    ``max_parallel`` is ``NPU_PROXY_MAX_PARALLEL``: a ``ContinuousBatchingPipeline``
    serves that many streams at once (1 with ``NPU_PROXY_CONTINUOUS_BATCHING=0``).
    ``CACHE_DIR`` is not set: measured here, it gave no gain on CPU.
    """

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """Exact numerics: a batched answer or embedding is the one it would be alone."""
        return dict(EXACT_CPU_NUMERICS)

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
            name="openvino-cpu",
            device="CPU",
            max_parallel=device_parallel(settings, ov_settings, "CPU"),
            batching=True,
            ov_settings=ov_settings,
            pipeline_factory=pipeline_factory,
            batching_factory=batching_factory,
            embedding_factory=embedding_factory,
            core_factory=core_factory,
        )

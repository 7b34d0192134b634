"""The CPU backend: real inference everywhere OpenVINO runs, the fallback of last resort."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npu_proxy.settings import Settings
from npu_proxy_openvino import EmbeddingPipelineFactory, OpenVINOBackend, PipelineFactory


class CpuBackend(OpenVINOBackend):
    """``openvino-cpu``: dynamic shapes, the model's whole context, no compile cache.

    ``max_parallel`` is 1: one ``LLMPipeline`` serves one stream at a time. Several
    streams need a ``ContinuousBatchingPipeline`` behind the same ``TextGenerator``
    seam (``npu_proxy_openvino.runner``); until then the engine queues.
    ``CACHE_DIR`` is not set: measured here, it gave no gain on CPU.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline_factory: PipelineFactory | None = None,
        embedding_factory: EmbeddingPipelineFactory | None = None,
        core_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            settings,
            name="openvino-cpu",
            device="CPU",
            max_parallel=1,
            pipeline_factory=pipeline_factory,
            embedding_factory=embedding_factory,
            core_factory=core_factory,
        )

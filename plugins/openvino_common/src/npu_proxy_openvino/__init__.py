"""OpenVINO GenAI pipelines shared by the npu-proxy device backends; the embedded models.

The device plugins (``npu_proxy_openvino_cpu``, ``_gpu``, ``_npu``) subclass
:class:`~npu_proxy_openvino.backend.OpenVINOBackend`; ``npu_proxy_openvino.plugin``
registers the two models that ship as packages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import (
        BackendOptions,
        EmbeddingPipelineFactory,
        OpenVINOBackend,
        PipelineFactory,
        openvino_embedding_pipeline,
        openvino_llm_pipeline,
    )
    from .batching import BatchingPlacement, ContinuousBatchingGenerator
    from .batching_worker import BatchingPipelineFactory, openvino_batching_pipeline
    from .embeddings import EmbeddingCache, OpenVINOEmbeddingModel
    from .language import OpenVINOLanguageModel
    from .models import EMBEDDING_NAME, LLM_NAME, embedded_models
    from .settings import OpenVINOSettings

#: Public name -> the submodule that defines it. Imported on first use (PEP 562), so a
#: batching worker process that imports one submodule does not pay for the others
#: (the settings, the engine, pydantic) before it can start compiling.
_EXPORTS = {
    "BackendOptions": "backend",
    "EmbeddingPipelineFactory": "backend",
    "OpenVINOBackend": "backend",
    "PipelineFactory": "backend",
    "openvino_embedding_pipeline": "backend",
    "openvino_llm_pipeline": "backend",
    "BatchingPlacement": "batching",
    "ContinuousBatchingGenerator": "batching",
    "BatchingPipelineFactory": "batching_worker",
    "openvino_batching_pipeline": "batching_worker",
    "EmbeddingCache": "embeddings",
    "OpenVINOEmbeddingModel": "embeddings",
    "OpenVINOLanguageModel": "language",
    "EMBEDDING_NAME": "models",
    "LLM_NAME": "models",
    "embedded_models": "models",
    "OpenVINOSettings": "settings",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = [
    "EMBEDDING_NAME",
    "LLM_NAME",
    "BackendOptions",
    "BatchingPipelineFactory",
    "BatchingPlacement",
    "ContinuousBatchingGenerator",
    "EmbeddingCache",
    "EmbeddingPipelineFactory",
    "OpenVINOBackend",
    "OpenVINOEmbeddingModel",
    "OpenVINOLanguageModel",
    "OpenVINOSettings",
    "PipelineFactory",
    "embedded_models",
    "openvino_batching_pipeline",
    "openvino_embedding_pipeline",
    "openvino_llm_pipeline",
]

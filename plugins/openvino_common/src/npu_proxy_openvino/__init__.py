"""OpenVINO GenAI pipelines shared by the npu-proxy device backends; the embedded models.

The device plugins (``npu_proxy_openvino_cpu``, ``_gpu``, ``_npu``) subclass
:class:`~npu_proxy_openvino.backend.OpenVINOBackend`; ``npu_proxy_openvino.plugin``
registers the two models that ship as packages.
"""

from .backend import (
    BatchingPipelineFactory,
    EmbeddingPipelineFactory,
    OpenVINOBackend,
    PipelineFactory,
    openvino_batching_pipeline,
    openvino_embedding_pipeline,
    openvino_llm_pipeline,
)
from .batching import ContinuousBatchingGenerator
from .embeddings import EmbeddingCache, OpenVINOEmbeddingModel
from .language import WARMUP_TOKENS, OpenVINOLanguageModel
from .models import EMBEDDING_NAME, LLM_NAME, embedded_models
from .settings import OpenVINOSettings

__all__ = [
    "EMBEDDING_NAME",
    "LLM_NAME",
    "WARMUP_TOKENS",
    "BatchingPipelineFactory",
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

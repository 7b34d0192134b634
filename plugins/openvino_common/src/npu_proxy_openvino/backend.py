"""The OpenVINO GenAI backend, parametrised by device; the device plugins subclass it.

A subclass chooses the device name, its concurrency, the properties the pipeline is
compiled with (:meth:`OpenVINOBackend.pipeline_properties`) and its limits
(:meth:`OpenVINOBackend.prompt_limit`, :meth:`OpenVINOBackend.context_limit`).
Everything that touches OpenVINO goes through injectable factories, so a device that
is not on this machine can be tested with an imitation of OpenVINO's behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.errors import CapabilityError, ModelLoadError
from npu_proxy.engine.types import Capability, DeviceInfo, GenerationRequest, ModelInfo
from npu_proxy.settings import Settings

from . import tokens
from .batching import ContinuousBatchingGenerator, scheduler_config
from .batching_process import ProcessBatchingGenerator, WorkerSpec
from .chat import render_prompt
from .devices import describe_device
from .embeddings import EmbeddingCache, OpenVINOEmbeddingModel, embedding_config
from .files import cache_root
from .language import Limits, OpenVINOLanguageModel
from .models import ModelPreparer, embedding_details
from .runner import LLMPipelineGenerator, TextGenerator
from .settings import OpenVINOSettings
from .tokens import TokenizerCache

log = logging.getLogger(__name__)

#: ``(model folder, device, properties) -> LLMPipeline``-like object.
PipelineFactory = Callable[[str, str, dict[str, Any]], Any]
#: ``(model folder, device, SchedulerConfig, properties) -> ContinuousBatchingPipeline``-like.
BatchingPipelineFactory = Callable[[str, str, Any, dict[str, Any]], Any]
#: ``(model folder, device, TextEmbeddingPipeline.Config, properties) -> pipeline``.
EmbeddingPipelineFactory = Callable[[str, str, Any, dict[str, Any]], Any]


def openvino_llm_pipeline(path: str, device: str, properties: dict[str, Any]) -> Any:
    """The real factory: ``openvino_genai.LLMPipeline(path, device, **properties)``."""
    import openvino_genai

    return openvino_genai.LLMPipeline(path, device, **properties)


def openvino_batching_pipeline(
    path: str, device: str, scheduler: Any, properties: dict[str, Any]
) -> Any:
    """The real factory: ``openvino_genai.ContinuousBatchingPipeline``."""
    import openvino_genai

    return openvino_genai.ContinuousBatchingPipeline(path, scheduler, device, properties)


def openvino_embedding_pipeline(
    path: str, device: str, config: Any, properties: dict[str, Any]
) -> Any:
    """The real factory: ``openvino_genai.TextEmbeddingPipeline``."""
    import openvino_genai

    return openvino_genai.TextEmbeddingPipeline(path, device, config, **properties)


def openvino_core() -> Any:
    """The real ``openvino.Core`` (loads device plugins: call it off the event loop)."""
    import openvino

    return openvino.Core()


class OpenVINOBackend(Backend):
    """Runs GGUF and IR language models, and ONNX/IR embedding models, on one device.

    Constructing it is cheap and touches no device (the hook's contract); the
    ``openvino.Core`` is created on the first probe, in a worker thread.

    With ``batching`` (CPU, GPU) and ``NPU_PROXY_CONTINUOUS_BATCHING`` on, a language
    model runs on a ``ContinuousBatchingPipeline`` that serves ``max_parallel`` streams
    at once; if that pipeline cannot be built for a model, the model falls back to an
    ``LLMPipeline`` serving one stream at a time. Otherwise ``max_parallel`` is 1.
    """

    #: Whether this device runs embedding models (the NPU's static shapes do not suit them).
    embeddings: bool = True

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        device: str,
        max_parallel: int = 1,
        max_loaded_models: int | None = None,
        batching: bool = False,
        ov_settings: OpenVINOSettings | None = None,
        pipeline_factory: PipelineFactory | None = None,
        batching_factory: BatchingPipelineFactory | None = None,
        embedding_factory: EmbeddingPipelineFactory | None = None,
        core_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.ov_settings = ov_settings or OpenVINOSettings()
        self.batching = batching and self.ov_settings.continuous_batching
        self.name = name
        self.device = device
        self.max_parallel = max_parallel if self.batching else 1
        self.max_loaded_models = max_loaded_models
        self.settings = settings
        self._pipeline_factory = pipeline_factory or openvino_llm_pipeline
        self._batching_factory = batching_factory or openvino_batching_pipeline
        self._embedding_factory = embedding_factory or openvino_embedding_pipeline
        self._core_factory = core_factory or openvino_core
        self._core: Any = None
        self._preparer = ModelPreparer(settings.model_path)
        self._tokenizers = TokenizerCache()
        self._embedding_cache = EmbeddingCache(settings.embedding_cache_size)

    # --- device-specific knobs (overridden by the device plugins) ---------------------

    def pipeline_properties(self, model: ModelInfo) -> dict[str, Any]:
        """Properties the pipeline is compiled with on this device (none by default)."""
        return {}

    def context_limit(self, model: ModelInfo) -> int:
        """Prompt plus generated tokens one generation may use on this device."""
        return model.context_length

    def device_cache_dir(self) -> Path:
        """Where compiled blobs for this device are kept (``CACHE_DIR``)."""
        return cache_root(self.settings.model_path) / "compiled" / self.device.lower()

    # --- Backend contract ---------------------------------------------------------------

    async def probe(self) -> DeviceInfo:
        """Device facts from ``openvino.Core``; never raises."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> DeviceInfo:
        try:
            if self._core is None:
                self._core = self._core_factory()
        except Exception as exc:
            log.warning("openvino.Core failed: %s", exc)
            return DeviceInfo(device=self.device, present=False,
                              error=f"{self.device} not found; OpenVINO failed to start")
        return describe_device(self._core, self.device)

    def supports(self, model: ModelInfo) -> bool:
        """GGUF/IR chat models; ONNX/IR embedding models where :attr:`embeddings`."""
        if model.path is None:
            return False
        if model.can(Capability.EMBEDDING):
            return self.embeddings and model.format in ("onnx", "ir")
        return model.can(Capability.COMPLETION) and model.format in ("gguf", "ir")

    async def count_tokens(self, model: ModelInfo, request: GenerationRequest) -> int:
        """Tokens of the rendered prompt, with the model's tokenizer (no device needed).

        The first call for a GGUF model converts it to IR once (seconds); later calls
        and later starts load only the tokenizer (milliseconds).
        """
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(
            lambda: tokens.count(tokenizer, render_prompt(tokenizer, request))
        )

    async def count_text_tokens(self, model: ModelInfo, texts: list[str]) -> list[int]:
        """Tokens of each text as given (no template), with the model's tokenizer."""
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(tokens.count_each, tokenizer, list(texts))

    async def load(self, model: ModelInfo) -> LoadedModel:
        """Convert (once) and compile ``model`` for this device.

        Raises :class:`ModelLoadError` naming the model and device (never a path) when
        the device is absent, the model does not suit it, or OpenVINO fails.
        """
        device = await self.probe()
        if not device.present:
            raise ModelLoadError(f"cannot load {model.name}: {device.error}")
        if not self.supports(model):
            raise ModelLoadError(
                f"{model.name} ({model.format}) cannot run on {self.device} with {self.name}"
            )
        folder = await self._prepared(model)
        tokenizer = await self._tokenizer(model)
        if model.can(Capability.EMBEDDING):
            return await self._load_embedding(model, folder, tokenizer)
        generator, parallel = await self._language_generator(model, folder)
        limits = Limits(prompt=self.prompt_limit(model), context=self.context_limit(model))
        return OpenVINOLanguageModel(
            model, self.device, generator, tokenizer, limits, max_parallel=parallel,
        )

    async def _language_generator(
        self, model: ModelInfo, folder: Path
    ) -> tuple[TextGenerator, int]:
        """The generator for a language model and how many streams it serves at once."""
        properties = self.pipeline_properties(model)
        name = f"npu-proxy-{self.device.lower()}-batching"
        if self.batching and self.max_parallel > 1 and self._batching_in_process():
            spec = WorkerSpec(str(folder), self.device, self.max_parallel,
                              self.ov_settings.kv_cache_gb, properties)
            try:
                process = await asyncio.to_thread(ProcessBatchingGenerator.start, spec,
                                                  name=name)
            except Exception as exc:
                log.warning("continuous batching of %s on %s failed (%s); serving one "
                            "stream at a time", model.name, self.device, exc)
            else:
                return process, self.max_parallel
        elif self.batching and self.max_parallel > 1:
            scheduler = scheduler_config(self.max_parallel, self.ov_settings.kv_cache_gb)
            try:
                batched = await asyncio.to_thread(
                    self._batching_factory, str(folder), self.device, scheduler, properties
                )
            except Exception as exc:
                log.warning("continuous batching of %s on %s failed (%s); serving one "
                            "stream at a time", model.name, self.device, exc)
            else:
                return ContinuousBatchingGenerator(batched, name=name), self.max_parallel
        try:
            pipeline = await asyncio.to_thread(
                self._pipeline_factory, str(folder), self.device, properties
            )
        except Exception as exc:
            log.error("loading %s on %s failed: %s", model.name, self.device, exc)
            raise ModelLoadError(f"{model.name} could not be loaded on {self.device}") from exc
        return LLMPipelineGenerator(pipeline), 1

    def _batching_in_process(self) -> bool:
        """Whether batched models run in a worker process.

        Only the real factory can: an injected one (an imitation of a device that is not
        here, a pipeline shared by tests) exists in this process only.
        """
        return (self.ov_settings.batching_process
                and self._batching_factory is openvino_batching_pipeline)

    async def _load_embedding(self, model: ModelInfo, folder: Path, tokenizer: Any) -> LoadedModel:
        details = embedding_details(model, folder)
        max_length = details.max_length
        config = embedding_config(details.pooling, details.normalize, max_length)
        try:
            pipeline = await asyncio.to_thread(
                self._embedding_factory, str(folder), self.device, config,
                self.pipeline_properties(model),
            )
        except Exception as exc:
            log.error("loading %s on %s failed: %s", model.name, self.device, exc)
            raise ModelLoadError(f"{model.name} could not be loaded on {self.device}") from exc
        return OpenVINOEmbeddingModel(
            model, self.device, pipeline, tokenizer, self._embedding_cache, max_length,
            max_parallel=1,  # one embed call on a TextEmbeddingPipeline at a time
        )

    async def _prepared(self, model: ModelInfo) -> Path:
        try:
            return await asyncio.to_thread(self._preparer.prepare, model)
        except Exception as exc:
            log.error("preparing %s failed: %s", model.name, exc)
            raise ModelLoadError(f"{model.name} could not be converted for OpenVINO") from exc

    async def _tokenizer(self, model: ModelInfo) -> Any:
        if model.path is None:
            raise CapabilityError(f"{model.name} has no tokenizer on disk")
        folder = await self._prepared(model)
        try:
            return await asyncio.to_thread(self._tokenizers.get, folder)
        except Exception as exc:
            log.error("tokenizer of %s failed to load: %s", model.name, exc)
            raise ModelLoadError(f"the tokenizer of {model.name} could not be loaded") from exc

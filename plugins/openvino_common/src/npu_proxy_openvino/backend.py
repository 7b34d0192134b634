"""The OpenVINO GenAI backend, parametrised by device; the device plugins subclass it.

A subclass states what its device does differently and nothing else: its names and
abilities as class attributes (:attr:`OpenVINOBackend.device`,
:attr:`OpenVINOBackend.continuous_batching`, ...), the properties the pipeline is
compiled with (:meth:`OpenVINOBackend.pipeline_properties`) and its limits
(:meth:`OpenVINOBackend.prompt_limit`, :meth:`OpenVINOBackend.context_limit`); the
constructor is the base class's.
Everything that touches OpenVINO goes through injectable factories, so a device that
is not on this machine can be tested with an imitation of OpenVINO's behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

from npu_proxy.engine.backend import Backend, LoadedModel
from npu_proxy.engine.errors import CapabilityError, ModelLoadError
from npu_proxy.engine.types import (
    Capability,
    DeviceInfo,
    GenerationRequest,
    ModelInfo,
    PreparedPrompt,
)
from npu_proxy.settings import Settings, load_plugin_settings

from . import tokens
from .batching import BatchingPlacement, ContinuousBatchingGenerator, stepping_thread
from .batching_process import worker_process
from .batching_worker import (
    BatchingPipelineFactory,
    WorkerSpec,
    openvino_batching_pipeline,
    single_stream_scheduler_config,
)
from .chat import render_prompt
from .devices import describe_device
from .embeddings import EmbeddingCache, OpenVINOEmbeddingModel, embedding_config
from .files import cache_root
from .language import Limits, OpenVINOLanguageModel
from .models import ModelPreparer, embedding_details
from .prompt import prepare_prompt
from .runner import LLMPipelineGenerator, TextGenerator
from .settings import OpenVINOSettings, device_parallel, kv_cache_budget_gb
from .tokens import TokenizerCache

log = logging.getLogger(__name__)

#: ``(model folder, device, properties) -> LLMPipeline``-like object.
PipelineFactory = Callable[[str, str, dict[str, Any]], Any]
#: ``(model folder, device, TextEmbeddingPipeline.Config, properties) -> pipeline``.
EmbeddingPipelineFactory = Callable[[str, str, Any, dict[str, Any]], Any]


def openvino_llm_pipeline(path: str, device: str, properties: dict[str, Any]) -> Any:
    """The real factory: ``openvino_genai.LLMPipeline(path, device, **properties)``."""
    import openvino_genai

    return openvino_genai.LLMPipeline(path, device, **properties)


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


class BackendOptions(TypedDict, total=False):
    """What a caller may give a device backend besides the core's settings: the OpenVINO
    settings (default: read from the environment) and the factories (default: the real
    OpenVINO ones; tests inject imitations of devices that are not here)."""

    ov_settings: OpenVINOSettings
    pipeline_factory: PipelineFactory
    batching_factory: BatchingPipelineFactory
    embedding_factory: EmbeddingPipelineFactory
    core_factory: Callable[[], Any]


class OpenVINOBackend(Backend):
    """Runs GGUF and IR language models, and ONNX/IR embedding models, on one device.

    A device plugin subclasses it and states only what differs, as class attributes
    (:attr:`name`, :attr:`device`, :attr:`continuous_batching`, :attr:`embeddings`,
    :attr:`max_loaded_models`) and by overriding :meth:`pipeline_properties`,
    :meth:`prompt_limit` and :meth:`context_limit`; the constructor is this one.

    Constructing it is cheap and touches no device (the hook's contract); the
    ``openvino.Core`` is created on the first probe, in a worker thread.

    With :attr:`continuous_batching` and ``NPU_PROXY_CONTINUOUS_BATCHING`` on, a
    language model runs on a ``ContinuousBatchingPipeline`` that serves ``max_parallel``
    streams at once (``NPU_PROXY_<DEVICE>_MAX_PARALLEL``, else ``NPU_PROXY_MAX_PARALLEL``),
    stepped where :attr:`batching_placement` says; if that pipeline cannot be built for
    a model, the model falls back to an ``LLMPipeline`` serving one stream at a time.
    Otherwise ``max_parallel`` is 1.
    """

    #: The backend's name (``openvino-cpu``) and OpenVINO's name of the device (``CPU``).
    name: str
    device: str
    #: Whether this device can serve several streams through continuous batching.
    continuous_batching: bool = False
    #: Whether this device runs embedding models (the NPU's static shapes do not suit them).
    embeddings: bool = True
    #: Models resident at once (None: as many as memory allows).
    max_loaded_models: int | None = None
    #: The variable that raises :meth:`prompt_limit` ("" where the model's context is
    #: the only limit), named when a prompt is refused before it reaches the device.
    prompt_limit_setting: str = ""

    def __init__(self, settings: Settings, **options: Unpack[BackendOptions]) -> None:
        self.ov_settings = options.get("ov_settings") or load_plugin_settings(OpenVINOSettings)
        self.batching = self.continuous_batching and self.ov_settings.continuous_batching
        self.max_parallel = (
            device_parallel(settings, self.ov_settings, self.device) if self.batching else 1
        )
        #: Where a batched model's step loop runs: ``NPU_PROXY_BATCHING_PROCESS``.
        self.batching_placement: BatchingPlacement = (
            "process" if self.ov_settings.batching_process else "thread"
        )
        self.settings = settings
        self._pipeline_factory = options.get("pipeline_factory", openvino_llm_pipeline)
        self._batching_factory = options.get("batching_factory", openvino_batching_pipeline)
        self._embedding_factory = options.get("embedding_factory", openvino_embedding_pipeline)
        self._core_factory = options.get("core_factory", openvino_core)
        self._core: Any = None
        self._preparer = ModelPreparer(settings.model_path)
        self._tokenizers = TokenizerCache()
        self._embedding_cache = EmbeddingCache(self.ov_settings.embedding_cache_size)

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
        """Tokens of the rendered prompt, with the model's tokenizer (no device needed)."""
        return (await self.prepare(model, request)).token_count

    async def prepare(self, model: ModelInfo, request: GenerationRequest) -> PreparedPrompt:
        """The prompt rendered with the model's template and tokenized, once (no device
        needed); its token ids are what the generation feeds GenAI.

        The first call for a GGUF model converts it to IR once (seconds); later calls
        and later starts load only the tokenizer (milliseconds).
        """
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(prepare_prompt, tokenizer, request)

    async def count_text_tokens(self, model: ModelInfo, texts: list[str]) -> list[int]:
        """Tokens of each text as given (no template), with the model's tokenizer."""
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(tokens.count_each, tokenizer, list(texts))

    async def render(self, model: ModelInfo, request: GenerationRequest) -> str:
        """The prompt as the model's chat template renders it (no device needed)."""
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(render_prompt, tokenizer, request)

    async def tokenize(self, model: ModelInfo, text: str) -> list[int]:
        """Token ids of ``text`` with the model's tokenizer, no special token added."""
        tokenizer = await self._tokenizer(model)
        return list(await asyncio.to_thread(tokens.encode, tokenizer, text, special=False))

    async def detokenize(self, model: ModelInfo, ids: list[int]) -> str:
        """The text of ``ids``, special tokens written out (what :meth:`tokenize` reads)."""
        tokenizer = await self._tokenizer(model)
        return await asyncio.to_thread(tokens.decode, tokenizer, ids)

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
        generator, parallel = await self._language_generator(model, folder, device)
        limits = Limits(prompt=self.prompt_limit(model), context=self.context_limit(model))
        return OpenVINOLanguageModel(
            model, self.device, generator, tokenizer, limits, max_parallel=parallel,
        )

    async def _language_generator(
        self, model: ModelInfo, folder: Path, device: DeviceInfo
    ) -> tuple[TextGenerator, int]:
        """The generator for a language model and how many streams it serves at once.

        On a device that can batch (CPU, GPU) the single-stream ``LLMPipeline`` gets the
        same KV budget and prefix-caching setting as a batched model, through its
        ``scheduler_config`` property (GenAI's own default there caches prefixes with a
        cache grown on demand). A model that cannot be batched gets no scheduler config,
        so GenAI may choose a backend without paged attention.
        """
        properties = self.pipeline_properties(model)
        kv_cache_gb = kv_cache_budget_gb(self.ov_settings, device.memory_bytes)
        paged = self.continuous_batching
        if self.batching and self.max_parallel > 1:
            try:
                generator = await asyncio.to_thread(self._start_batching, folder, properties,
                                                    kv_cache_gb)
            except Exception as exc:
                log.warning("continuous batching of %s on %s failed (%s); serving one "
                            "stream at a time", model.name, self.device, exc)
                paged = False
            else:
                return generator, self.max_parallel
        if paged:
            scheduler = single_stream_scheduler_config(kv_cache_gb,
                                                       self.ov_settings.prefix_caching)
            properties = {**properties, "scheduler_config": scheduler}
        try:
            pipeline = await asyncio.to_thread(
                self._pipeline_factory, str(folder), self.device, properties
            )
        except Exception as exc:
            log.error("loading %s on %s failed: %s", model.name, self.device, exc)
            raise ModelLoadError(f"{model.name} could not be loaded on {self.device}") from exc
        return LLMPipelineGenerator(pipeline), 1

    def _start_batching(self, folder: Path, properties: dict[str, Any],
                        kv_cache_gb: int) -> TextGenerator:
        """Build the batching pipeline where :attr:`batching_placement` says (blocking).

        Its KV cache is ``kv_cache_gb`` and keeps prompt prefixes unless
        ``NPU_PROXY_PREFIX_CACHING=0``; the cache lives and dies with the pipeline, so
        unloading the model drops it.

        ``"process"`` calls the batching factory inside the worker process, so it must
        be a module-level function (the real one is); an imitation or a pipeline shared
        by tests exists in this process only and needs ``"thread"``.
        """
        spec = WorkerSpec(str(folder), self.device, self.max_parallel, kv_cache_gb,
                          self.ov_settings.prefix_caching, properties, self._batching_factory)
        name = f"npu-proxy-{self.device.lower()}-batching"
        launch = (worker_process(spec, name) if self.batching_placement == "process"
                  else stepping_thread(spec.build(), name, spec.prefix_caching))
        return ContinuousBatchingGenerator.start(launch, self.batching_placement,
                                                 device=self.device)

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

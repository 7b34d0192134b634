"""The NPU backend through an imitation of OpenVINO on NPU (no NPU on this machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.errors import ModelLoadError, PromptTooLongError
from npu_proxy.engine.types import (
    Done,
    GenerationRequest,
    Message,
    ModelInfo,
    SamplingOptions,
    TextDelta,
)
from npu_proxy.settings import Settings
from npu_proxy.testing import BackendContract
from npu_proxy_openvino.testing import DeviceImitation, FakeCore
from npu_proxy_openvino_npu import NpuBackend, NpuSettings


@pytest.fixture
def limits() -> NpuSettings:
    # The smallest compiled prompt the settings allow keeps refusals cheap to provoke.
    return NpuSettings(max_prompt_len=64, min_response_len=32)


@pytest.fixture
def imitation(cpu_llm_pipeline: Any) -> DeviceImitation:
    return DeviceImitation(cpu_llm_pipeline)


@pytest.fixture
def backend(ov_settings: Settings, limits: NpuSettings, imitation: DeviceImitation) -> NpuBackend:
    return NpuBackend(ov_settings, npu_settings=limits, pipeline_factory=imitation,
                      core_factory=lambda: FakeCore(["CPU", "NPU"]))


@pytest.fixture
def model(smollm2: ModelInfo) -> ModelInfo:
    return smollm2


class TestNpuBackendContract(BackendContract):
    """The core's backend contract against the NPU imitation."""


def chat(text: str, **options: Any) -> GenerationRequest:
    return GenerationRequest(model="smollm2:135m", messages=(Message("user", text),),
                             options=SamplingOptions(temperature=0, **options))


async def test_compiles_with_the_npu_properties(
    backend: NpuBackend, model: ModelInfo, imitation: DeviceImitation, ov_settings: Settings
) -> None:
    await backend.load(model)
    [(path, device, properties)] = imitation.calls
    assert device == "NPU"
    assert (Path(path) / "openvino_model.xml").is_file()  # the converted IR, not the GGUF
    assert properties["MAX_PROMPT_LEN"] == 64
    assert properties["MIN_RESPONSE_LEN"] == 32
    assert Path(properties["CACHE_DIR"]).is_relative_to(ov_settings.model_path)
    assert properties["GENERATE_HINT"] == "BEST_PERF"
    assert properties["NPUW_LLM_ENABLE_PREFIX_CACHING"] == "NO"  # off until measured
    assert "scheduler_config" not in properties  # no paged attention on the NPU


async def test_prefix_caching_reaches_the_npu_pipeline(
    ov_settings: Settings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    backend = NpuBackend(ov_settings, npu_settings=NpuSettings(npu_prefix_caching=True),
                         pipeline_factory=imitation, core_factory=lambda: FakeCore(["NPU"]))
    loaded = await backend.load(model)
    assert imitation.calls[0][2]["NPUW_LLM_ENABLE_PREFIX_CACHING"] == "YES"
    # The NPU still serves one stream on its LLMPipeline: the property changes nothing else.
    events = [event async for event in loaded.generate(chat("Say hi.", max_tokens=4))]
    assert isinstance(events[-1], Done) and events[-1].usage.completion_tokens > 0
    await loaded.unload()


async def test_generate_hint_is_configurable(
    ov_settings: Settings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    backend = NpuBackend(ov_settings, npu_settings=NpuSettings(npu_generate_hint="FAST_COMPILE"),
                         pipeline_factory=imitation, core_factory=lambda: FakeCore(["NPU"]))
    await backend.load(model)
    assert imitation.calls[0][2]["GENERATE_HINT"] == "FAST_COMPILE"


async def test_limits_and_capacity(
    backend: NpuBackend, model: ModelInfo, minilm: ModelInfo
) -> None:
    assert backend.prompt_limit(model) == 64
    assert backend.context_limit(model) == 64 + 32
    assert backend.max_parallel == 1
    assert backend.max_loaded_models == 1
    assert backend.supports(model)
    assert not backend.supports(minilm)  # static shapes: embeddings stay on CPU/GPU


async def test_long_prompt_refused_before_the_device(
    backend: NpuBackend, model: ModelInfo, imitation: DeviceImitation
) -> None:
    loaded = await backend.load(model)
    request = chat("word " * 80)
    assert await backend.count_tokens(model, request) > 64  # routing can see it first
    with pytest.raises(PromptTooLongError) as caught:
        async for _ in loaded.generate(request):
            pass
    assert caught.value.limit == 64
    assert imitation.pipelines[0].generations == 0  # never reached the device


async def test_device_refusal_is_reported_as_prompt_too_long(
    ov_settings: Settings, limits: NpuSettings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    class Unchecked(NpuBackend):
        def prompt_limit(self, model: ModelInfo) -> int | None:
            return None  # let the prompt reach the imitation, as a miscount would

    backend = Unchecked(ov_settings, npu_settings=limits, pipeline_factory=imitation,
                        core_factory=lambda: FakeCore(["NPU"]))
    loaded = await backend.load(model)
    # Still inside the context (96) but over MAX_PROMPT_LEN (64): OpenVINO refuses.
    with pytest.raises(PromptTooLongError):
        async for _ in loaded.generate(chat("word " * 50, max_tokens=2)):
            pass


def test_imitation_refuses_like_openvino(imitation: DeviceImitation) -> None:
    pipeline = imitation("model", "NPU", {"MAX_PROMPT_LEN": 8})
    config = pipeline.get_generation_config()
    config.max_new_tokens = 2
    with pytest.raises(RuntimeError, match='Set the "MAX_PROMPT_LEN" config option'):
        pipeline.generate(["word " * 20], config)


async def test_one_generation_at_a_time(
    backend: NpuBackend, model: ModelInfo, imitation: DeviceImitation
) -> None:
    loaded = await backend.load(model)

    async def answer(text: str) -> str:
        events = [e async for e in loaded.generate(chat(text, max_tokens=6))]
        assert isinstance(events[-1], Done)
        return "".join(e.text for e in events if isinstance(e, TextDelta))

    # The imitation raises "Infer Request is busy" on overlap, as LLMPipeline does.
    first, second = await asyncio.gather(answer("Hi"), answer("Hello"))
    assert first and second
    assert imitation.pipelines[0].generations == 2


async def test_imitation_refuses_a_concurrent_generate(imitation: DeviceImitation) -> None:
    pipeline = imitation("model", "NPU", {})
    config = pipeline.get_generation_config()
    config.max_new_tokens = 30
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_streamer(piece: str) -> bool:
        loop.call_soon_threadsafe(entered.set)
        return False  # False = keep running, as GenAI reads a bool streamer result

    first = asyncio.create_task(asyncio.to_thread(pipeline.generate, ["Tell a story"], config,
                                                  slow_streamer))
    await entered.wait()
    with pytest.raises(RuntimeError, match="busy"):
        pipeline.generate(["Hi"], config)
    await first


async def test_absent_npu_is_reported_and_load_fails_cleanly(
    ov_settings: Settings, limits: NpuSettings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    backend = NpuBackend(ov_settings, npu_settings=limits,
                         pipeline_factory=imitation)  # the real openvino.Core
    info = await backend.probe()
    assert not info.present
    assert info.error == "NPU not found; OpenVINO sees: CPU"
    with pytest.raises(ModelLoadError, match="NPU not found; OpenVINO sees: CPU"):
        await backend.load(model)
    assert imitation.calls == []
    # Counting still works without the device: routing can send the request elsewhere.
    assert await backend.count_tokens(model, chat("Hi")) > 0


async def test_probe_reports_the_device(backend: NpuBackend) -> None:
    info = await backend.probe()
    assert info.present
    assert info.full_name == "Imitation NPU"
    assert info.driver_version == "1688"

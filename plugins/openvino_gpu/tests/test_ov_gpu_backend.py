"""The GPU backend through an imitation of OpenVINO on GPU (no GPU on this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.errors import ModelLoadError
from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import Settings
from npu_proxy.testing import BackendContract
from npu_proxy_openvino.testing import DeviceImitation, FakeCore
from npu_proxy_openvino_gpu import GpuBackend


@pytest.fixture
def imitation(cpu_llm_pipeline: Any) -> DeviceImitation:
    return DeviceImitation(cpu_llm_pipeline)


@pytest.fixture
def backend(ov_settings: Settings, imitation: DeviceImitation) -> GpuBackend:
    return GpuBackend(ov_settings, pipeline_factory=imitation,
                      core_factory=lambda: FakeCore(["CPU", "GPU.0"]))


@pytest.fixture
def model(smollm2: ModelInfo) -> ModelInfo:
    return smollm2


class TestGpuBackendContract(BackendContract):
    """The core's backend contract against the GPU imitation."""


async def test_compiles_with_a_cache_dir(
    backend: GpuBackend, model: ModelInfo, imitation: DeviceImitation, ov_settings: Settings
) -> None:
    await backend.load(model)
    [(_path, device, properties)] = imitation.calls
    assert device == "GPU"
    assert Path(properties["CACHE_DIR"]).is_relative_to(ov_settings.model_path)
    assert "MAX_PROMPT_LEN" not in properties  # dynamic shapes: no compiled prompt limit
    assert backend.prompt_limit(model) is None
    assert backend.context_limit(model) == model.context_length


async def test_numbered_gpu_counts_as_present(backend: GpuBackend) -> None:
    info = await backend.probe()
    assert info.present
    assert info.memory_bytes == 8 << 30
    assert info.properties["openvino_devices"] == ["GPU.0"]


async def test_absent_gpu_is_reported_and_load_fails_cleanly(
    ov_settings: Settings, imitation: DeviceImitation, model: ModelInfo
) -> None:
    backend = GpuBackend(ov_settings, pipeline_factory=imitation)  # the real openvino.Core
    info = await backend.probe()
    assert not info.present
    assert info.error == "GPU not found; OpenVINO sees: CPU"
    with pytest.raises(ModelLoadError) as caught:
        await backend.load(model)
    assert "GPU not found" in caught.value.message
    assert str(ov_settings.model_path) not in caught.value.message
    assert imitation.calls == []

"""Embeddings with the bundled all-MiniLM-L6-v2 (int8 ONNX converted to IR once)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from npu_proxy.engine.errors import CapabilityError, PromptTooLongError
from npu_proxy.engine.types import EmbeddingRequest, GenerationRequest, ModelInfo
from npu_proxy.settings import Settings, SettingsError
from npu_proxy_openvino import OpenVINOBackend, OpenVINOEmbeddingModel, OpenVINOSettings


class CpuEmbeddings(OpenVINOBackend):
    """The shared backend on the CPU, as a device plugin declares one."""

    name = "openvino-test"
    device = "CPU"


@pytest.fixture
def backend(ov_settings: Settings) -> OpenVINOBackend:
    return CpuEmbeddings(ov_settings)


@pytest.fixture
async def embedder(backend: OpenVINOBackend, minilm: ModelInfo) -> OpenVINOEmbeddingModel:
    loaded = await backend.load(minilm)
    assert isinstance(loaded, OpenVINOEmbeddingModel)
    return loaded


def request(*texts: str, **kwargs: object) -> EmbeddingRequest:
    return EmbeddingRequest(model="all-minilm:latest", inputs=texts, **kwargs)  # type: ignore[arg-type]


async def test_similar_meanings_rank_closer(embedder: OpenVINOEmbeddingModel) -> None:
    result = await embedder.embed(request("a cat", "a kitten", "quantum physics"))
    cat, kitten, physics = (np.array(v) for v in result.vectors)
    assert len(cat) == 384
    assert math.isclose(float(np.linalg.norm(cat)), 1.0, rel_tol=1e-4)  # normalised
    assert float(cat @ kitten) > float(cat @ physics) + 0.3
    assert result.prompt_tokens == 3 * 4  # [CLS] two words [SEP], for each input


async def test_cache_serves_repeats(embedder: OpenVINOEmbeddingModel,
                                    backend: OpenVINOBackend) -> None:
    cache = backend._embedding_cache
    first = await embedder.embed(request("repeat me", "repeat me"))
    hits = cache.hits
    second = await embedder.embed(request("repeat me"))
    assert cache.hits == hits + 1
    assert second.vectors[0] == first.vectors[0] == first.vectors[1]
    assert second.prompt_tokens * 2 == first.prompt_tokens  # counted even when cached


async def test_truncation_and_dimensions(embedder: OpenVINOEmbeddingModel) -> None:
    long = "word " * 400
    result = await embedder.embed(request(long))
    assert result.prompt_tokens == 256
    with pytest.raises(PromptTooLongError):
        await embedder.embed(request(long, truncate=False))
    short = await embedder.embed(request("a cat", dimensions=64))
    assert len(short.vectors[0]) == 64
    assert math.isclose(float(np.linalg.norm(short.vectors[0])), 1.0, rel_tol=1e-4)


async def test_embedding_model_does_not_generate(embedder: OpenVINOEmbeddingModel) -> None:
    with pytest.raises(CapabilityError):
        async for _ in embedder.generate(GenerationRequest(model="all-minilm:latest",
                                                           prompt="hi")):
            pass


async def test_the_cache_size_is_the_plugin_s_own_variable(
    ov_settings: Settings, minilm: ModelInfo, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "embedding_cache_size" not in Settings.model_fields
    field = OpenVINOSettings.model_fields["embedding_cache_size"]
    assert (field.default, field.description) == (
        1000, "Embeddings kept in the LRU cache (0 disables it).")
    monkeypatch.setenv("NPU_PROXY_EMBEDDING_CACHE_SIZE", "0")
    uncached = await CpuEmbeddings(ov_settings).load(minilm)
    assert isinstance(uncached, OpenVINOEmbeddingModel)
    await uncached.embed(request("twice"))
    await uncached.embed(request("twice"))
    assert uncached._cache.hits == 0 and uncached._cache.misses == 2


def test_an_invalid_cache_size_names_its_variable(
    ov_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NPU_PROXY_EMBEDDING_CACHE_SIZE", "-1")
    with pytest.raises(SettingsError, match="NPU_PROXY_EMBEDDING_CACHE_SIZE"):
        CpuEmbeddings(ov_settings)

"""Embedding models on ``TextEmbeddingPipeline`` with an LRU cache in front.

Vectors are pooled as the model was trained (all-MiniLM-L6-v2: mean) and L2-normalised.
The cache lives on the backend, keyed by the model's digest and the exact input text,
so it survives a keep-alive unload and never mixes two models' vectors.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from npu_proxy.engine.backend import LoadedModel
from npu_proxy.engine.errors import CapabilityError, InvalidRequestError, PromptTooLongError
from npu_proxy.engine.types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
)

from .tokens import count_each


class EmbeddingCache:
    """A thread-safe LRU map ``(model key, text) -> vector``. Size 0 disables it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> list[float] | None:
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: tuple[str, str], vector: list[float]) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def embedding_config(pooling: str, normalize: bool, max_length: int | None) -> Any:
    """A ``TextEmbeddingPipeline.Config`` for the model's pooling, normalisation, length."""
    import openvino_genai

    config = openvino_genai.TextEmbeddingPipeline.Config()
    kinds = openvino_genai.TextEmbeddingPipeline.PoolingType
    config.pooling_type = {"mean": kinds.MEAN, "last_token": kinds.LAST_TOKEN}.get(
        pooling, kinds.CLS
    )
    config.normalize = normalize
    if max_length:
        # Inputs longer than this are cut by the pipeline; requests that asked not to
        # be truncated are refused before reaching it.
        config.max_length = max_length
    return config


class OpenVINOEmbeddingModel(LoadedModel):
    """An embedding model resident on a device."""

    def __init__(
        self,
        info: ModelInfo,
        device: str,
        pipeline: Any,
        tokenizer: Any,
        cache: EmbeddingCache,
        max_length: int,
        max_parallel: int = 1,
    ) -> None:
        self.info = info
        self.device = device
        self.size = info.size
        self._pipe = pipeline
        self._tokenizer = tokenizer
        self._cache = cache
        self._max_length = max_length
        self._key = info.digest or info.name
        self._slots = asyncio.Semaphore(max_parallel)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Embedding models do not generate: always :class:`CapabilityError`."""
        raise CapabilityError(f"{self.info.name} is an embedding model and cannot generate")
        yield  # pragma: no cover - makes this an async generator like the contract says

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Vectors in input order; cached inputs skip the device.

        ``prompt_tokens`` counts every input (cached or not) with the model's tokenizer,
        capped at the model's length when truncating. ``truncate=False`` and an input
        over the length raises :class:`PromptTooLongError`.
        """
        start = time.perf_counter_ns()
        texts = list(request.inputs)
        if not texts:
            return EmbeddingResult(vectors=[], prompt_tokens=0)
        if request.dimensions is not None and not (
            1 <= request.dimensions <= self.info.embedding_length or not self.info.embedding_length
        ):
            raise InvalidRequestError(
                f"dimensions must be between 1 and {self.info.embedding_length}",
                param="dimensions",
            )
        counts = await asyncio.to_thread(count_each, self._tokenizer, texts)
        longest = max(counts)
        if not request.truncate and longest > self._max_length:
            raise PromptTooLongError(longest, self._max_length, self.info.name)
        found: dict[str, list[float]] = {}
        for text in texts:
            if text not in found and (vector := self._cache.get((self._key, text))) is not None:
                found[text] = vector
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        if missing:
            async with self._slots:
                computed = await asyncio.to_thread(self._pipe.embed_documents, missing)
            for text, vector in zip(missing, computed, strict=True):
                values = [float(x) for x in vector]
                found[text] = values
                self._cache.put((self._key, text), values)
        vectors = [found[text] for text in texts]
        if request.dimensions is not None:
            vectors = [_shorten(vector, request.dimensions) for vector in vectors]
        return EmbeddingResult(
            vectors=vectors,
            prompt_tokens=sum(min(count, self._max_length) for count in counts),
            total_duration=time.perf_counter_ns() - start,
        )

    async def unload(self) -> None:
        pipe, self._pipe = self._pipe, None
        await asyncio.to_thread(_release, pipe)


def _shorten(vector: list[float], size: int) -> list[float]:
    # Matryoshka-style: cut, then re-normalise so cosine similarity stays meaningful.
    cut = vector[:size]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [x / norm for x in cut]


def _release(pipe: Any) -> None:
    del pipe

"""Options of the OpenVINO backends (``NPU_PROXY_*``, read next to the core's settings)."""

from __future__ import annotations

from npu_proxy.settings import PluginSettings, Settings
from pydantic import Field


class OpenVINOSettings(PluginSettings):
    """How the OpenVINO backends run models (read once per backend with
    :func:`~npu_proxy.settings.load_plugin_settings`).

    The number of concurrent streams per device is the core's ``NPU_PROXY_MAX_PARALLEL``
    unless the device's own variable (``NPU_PROXY_CPU_MAX_PARALLEL``,
    ``NPU_PROXY_GPU_MAX_PARALLEL``) sets it.
    """

    continuous_batching: bool = Field(
        True,
        description="CPU/GPU serve up to NPU_PROXY_MAX_PARALLEL streams at once through "
        "ContinuousBatchingPipeline; 0: one LLMPipeline stream at a time.",
    )
    cpu_max_parallel: int | None = Field(
        None, ge=1,
        description="Concurrent generations on the CPU; unset: NPU_PROXY_MAX_PARALLEL.",
    )
    gpu_max_parallel: int | None = Field(
        None, ge=1,
        description="Concurrent generations on the GPU; unset: NPU_PROXY_MAX_PARALLEL.",
    )
    kv_cache_gb: int | None = Field(
        None, ge=0,
        description="KV-cache budget of each batched model on CPU/GPU, in whole GB: "
        "finished conversations' prefix blocks stay cached inside it and the least "
        "recently used are overwritten first. Unset: an eighth of the device's memory "
        "(system RAM for the CPU), 1 to 8 GB; 0: grown on demand to the peak the running "
        "requests need (never shrinks, keeps little beyond it).",
    )
    prefix_caching: bool = Field(
        True,
        description="Keep the KV cache of what requests read on CPU/GPU, so a request "
        "that starts with a cached prefix (an agent's next turn) evaluates only its new "
        "tokens (0: off; answers are the same either way).",
    )
    batching_process: bool = Field(
        True,
        description="Run each continuous-batching pipeline in its own worker process, so "
        "GenAI's step() (which holds the GIL) never stalls the server; 0: a stepping "
        "thread in the server process.",
    )
    embedding_cache_size: int = Field(
        1000, ge=0, description="Embeddings kept in the LRU cache (0 disables it)."
    )


#: The KV-cache budget when the device's memory is unknown, in GB.
FALLBACK_KV_CACHE_GB = 2
#: The budget is this fraction of the device's memory, clamped to the bounds below.
KV_CACHE_MEMORY_FRACTION = 1 / 8
KV_CACHE_MIN_GB = 1
KV_CACHE_MAX_GB = 8


def kv_cache_budget_gb(ov_settings: OpenVINOSettings, memory_bytes: int | None) -> int:
    """The KV-cache budget of a batched model in GB (``SchedulerConfig.cache_size``).

    ``NPU_PROXY_KV_CACHE_GB`` when set (0 included: grow on demand); otherwise
    :data:`KV_CACHE_MEMORY_FRACTION` of ``memory_bytes`` (the device's memory as its
    probe reports it), between :data:`KV_CACHE_MIN_GB` and :data:`KV_CACHE_MAX_GB`, or
    :data:`FALLBACK_KV_CACHE_GB` when the memory is unknown. A fixed budget is reserved,
    not committed: memory is used as blocks are first written, so it bounds growth.
    """
    if ov_settings.kv_cache_gb is not None:
        return ov_settings.kv_cache_gb
    if not memory_bytes:
        return FALLBACK_KV_CACHE_GB
    share = int(memory_bytes * KV_CACHE_MEMORY_FRACTION) >> 30
    return max(KV_CACHE_MIN_GB, min(KV_CACHE_MAX_GB, share))


def device_parallel(settings: Settings, ov_settings: OpenVINOSettings, device: str) -> int:
    """Concurrent generations for ``device``: its own variable, else the core's."""
    own = {"CPU": ov_settings.cpu_max_parallel, "GPU": ov_settings.gpu_max_parallel}.get(device)
    return own if own is not None else settings.max_parallel

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
    kv_cache_gb: int = Field(
        2, ge=0,
        description="KV cache each batched model allocates on CPU/GPU, in GB; 0 grows it "
        "on demand.",
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


def device_parallel(settings: Settings, ov_settings: OpenVINOSettings, device: str) -> int:
    """Concurrent generations for ``device``: its own variable, else the core's."""
    own = {"CPU": ov_settings.cpu_max_parallel, "GPU": ov_settings.gpu_max_parallel}.get(device)
    return own if own is not None else settings.max_parallel

"""OpenVINO GenAI Intel NPU backend for npu-proxy (backend name ``openvino-npu``)."""

from .backend import NpuBackend, NpuSettings

__all__ = ["NpuBackend", "NpuSettings"]

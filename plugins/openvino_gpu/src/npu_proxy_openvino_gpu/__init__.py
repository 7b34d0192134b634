"""OpenVINO GenAI Intel GPU backend for npu-proxy (backend name ``openvino-gpu``)."""

from .backend import GpuBackend

__all__ = ["GpuBackend"]

"""OpenVINO GenAI CPU backend for npu-proxy (backend name ``openvino-cpu``)."""

from .backend import CpuBackend

__all__ = ["CpuBackend"]

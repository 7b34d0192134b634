"""OpenVINO GenAI Intel NPU backend for npu-proxy."""

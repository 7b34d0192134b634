"""OpenVINO GenAI Intel GPU backend for npu-proxy."""

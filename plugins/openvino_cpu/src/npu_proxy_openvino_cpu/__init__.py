"""OpenVINO GenAI CPU backend for npu-proxy."""

"""Ollama API dialect for npu-proxy."""

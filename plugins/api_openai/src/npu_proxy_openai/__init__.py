"""OpenAI API dialect for npu-proxy."""

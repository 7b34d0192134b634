"""npu-proxy: Intel NPU, GPU and CPU inference behind the Ollama, OpenAI and Anthropic APIs."""

__version__ = "0.1.0"

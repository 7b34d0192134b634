"""npu-proxy: local inference on Intel NPU, GPU and CPU behind the Ollama, OpenAI and Anthropic APIs."""

__version__ = "0.1.0"

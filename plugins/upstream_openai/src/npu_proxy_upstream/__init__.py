"""Remote OpenAI-compatible engines (vLLM, OpenVINO Model Server, llama.cpp's server,
Ollama, another npu-proxy) as npu-proxy devices named ``upstream:NAME``."""

"""OpenVINO GenAI pipelines shared by the npu-proxy device backends, and the embedded default models."""

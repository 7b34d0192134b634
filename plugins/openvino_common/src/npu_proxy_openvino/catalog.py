"""Short pull names for OpenVINO's pre-converted exports and common embedding models.

The aliases are offered by the formats that read these repositories (``ir``, ``onnx``),
so they exist exactly when this plugin is loaded. ``note`` is the device advice a user
sees: the NPU wants INT4 symmetric, channel-wise weights (``--sym --ratio 1.0
--group-size -1``); group-wise exports load on CPU and GPU and may be refused or slow
on the NPU.
"""

from __future__ import annotations

from npu_proxy.engine.formats import HubAlias

IR_ALIASES = (
    HubAlias("tinyllama:1.1b", "OpenVINO/TinyLlama-1.1B-Chat-v1.0-int4-ov", "ir", "llama",
             "1.1B", "INT4", ("tinyllama:latest",),
             "recommended for the NPU (small; loads with MAX_PROMPT_LEN)"),
    HubAlias("phi2:2.7b", "OpenVINO/phi-2-int4-ov", "ir", "phi", "2.7B", "INT4",
             ("phi2:latest", "phi-2:latest"),
             "runs on the NPU; group-wise INT4, re-export channel-wise for best speed"),
    HubAlias("mistral:7b", "OpenVINO/mistral-7b-instruct-v0.1-int4-ov", "ir", "llama", "7B",
             "INT4", ("mistral:latest",), "may exceed NPU memory; GPU or CPU recommended"),
    HubAlias("llama2:7b", "OpenVINO/llama-2-7b-chat-hf-int4-ov", "ir", "llama", "7B", "INT4",
             ("llama2:latest",), "may exceed NPU memory; GPU or CPU recommended"),
    HubAlias("granite4:micro", "OpenVINO/granite-4.0-micro-int4-ov", "ir", "granite", "3B",
             "INT4", ("granite4:latest",), "runs on the NPU"),
)

EMBEDDING_ALIASES = (
    HubAlias("bge-small:latest", "BAAI/bge-small-en-v1.5", "onnx", "bert", "33M", "F32",
             ("bge-small-en-v1.5:latest",),
             "embeddings run on CPU by default (NPU_PROXY_EMBEDDING_DEVICE)"),
    HubAlias("bge-base:latest", "BAAI/bge-base-en-v1.5", "onnx", "bert", "109M", "F32",
             ("bge-base-en-v1.5:latest",),
             "embeddings run on CPU by default (NPU_PROXY_EMBEDDING_DEVICE)"),
    HubAlias("all-minilm:l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "onnx", "bert",
             "23M", "F32", (), "embeddings run on CPU by default"),
)

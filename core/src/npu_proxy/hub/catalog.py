"""Short names for the models of the original compatibility matrix.

Each alias maps to a Hugging Face repository, preferring OpenVINO's pre-converted INT4
exports. ``npu`` says how the export suits the NPU: the NPU wants INT4 symmetric,
channel-wise weights (``--sym --ratio 1.0 --group-size -1``); group-wise exports load
on CPU and GPU and may be refused or slow on the NPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["ir", "gguf", "embedding"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One alias: the repository, what it holds, and the facts a listing shows."""

    name: str  # canonical model:tag
    repo: str
    kind: Kind
    family: str
    parameter_size: str
    quantization: str
    npu: str  # how well the export suits the NPU


_ENTRIES = (
    CatalogEntry("tinyllama:1.1b", "OpenVINO/TinyLlama-1.1B-Chat-v1.0-int4-ov", "ir", "llama",
                 "1.1B", "INT4", "recommended for the NPU (small; loads with MAX_PROMPT_LEN)"),
    CatalogEntry("phi2:2.7b", "OpenVINO/phi-2-int4-ov", "ir", "phi", "2.7B", "INT4",
                 "runs on the NPU; group-wise INT4, re-export channel-wise for best speed"),
    CatalogEntry("mistral:7b", "OpenVINO/mistral-7b-instruct-v0.1-int4-ov", "ir", "llama",
                 "7B", "INT4", "may exceed NPU memory; GPU or CPU recommended"),
    CatalogEntry("llama2:7b", "OpenVINO/llama-2-7b-chat-hf-int4-ov", "ir", "llama", "7B",
                 "INT4", "may exceed NPU memory; GPU or CPU recommended"),
    CatalogEntry("granite4:micro", "OpenVINO/granite-4.0-micro-int4-ov", "ir", "granite",
                 "3B", "INT4", "runs on the NPU"),
    CatalogEntry("bge-small:latest", "BAAI/bge-small-en-v1.5", "embedding", "bert", "33M",
                 "F32", "embeddings run on CPU by default (NPU_PROXY_EMBEDDING_DEVICE)"),
    CatalogEntry("bge-base:latest", "BAAI/bge-base-en-v1.5", "embedding", "bert", "109M",
                 "F32", "embeddings run on CPU by default (NPU_PROXY_EMBEDDING_DEVICE)"),
    CatalogEntry("all-minilm:l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "embedding",
                 "bert", "23M", "F32", "embeddings run on CPU by default"),
)

#: Aliases by canonical name; extra spellings that users type point at the same entry.
CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}
CATALOG.update(
    {
        "tinyllama:latest": CATALOG["tinyllama:1.1b"],
        "phi2:latest": CATALOG["phi2:2.7b"],
        "phi-2:latest": CATALOG["phi2:2.7b"],
        "mistral:latest": CATALOG["mistral:7b"],
        "llama2:latest": CATALOG["llama2:7b"],
        "granite4:latest": CATALOG["granite4:micro"],
        "bge-small-en-v1.5:latest": CATALOG["bge-small:latest"],
        "bge-base-en-v1.5:latest": CATALOG["bge-base:latest"],
    }
)

"""``ollama create`` from a local GGUF as the ``ollama`` CLI and Python client do it: upload
the file as a blob, create with ``files``, then chat with the model on the real CPU
backend (the embedded SmolLM2 GGUF as the uploaded file)."""

from __future__ import annotations

import hashlib

import httpx
import ollama
from npu_proxy.engine.types import ModelInfo
from npu_proxy.testing import LiveServer


def test_create_blob_then_create_with_files_then_chat(
    real_server: LiveServer, smollm2: ModelInfo
) -> None:
    assert smollm2.path is not None
    client = ollama.Client(host=real_server.url, timeout=300)
    digest = client.create_blob(smollm2.path)
    with smollm2.path.open("rb") as stream:
        assert digest == "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()
    assert httpx.head(f"{real_server.url}/api/blobs/{digest}").status_code == 200
    created = client.create(model="uploaded-smollm2", files={"model.gguf": digest},
                            parameters={"temperature": 0})
    assert created.status == "success"
    try:
        listed = {m.model: m for m in client.list().models}
        assert listed["uploaded-smollm2:latest"].digest == digest.removeprefix("sha256:")
        shown = client.show("uploaded-smollm2")
        assert shown.details and shown.details.format == "gguf"
        assert shown.capabilities and "completion" in shown.capabilities
        reply = client.chat(model="uploaded-smollm2",
                            messages=[{"role": "user", "content": "Name a colour."}],
                            options={"num_predict": 8})
        assert reply.message.content and reply.eval_count
        assert reply.prompt_eval_count and reply.prompt_eval_count > 5
    finally:
        client.delete("uploaded-smollm2")
    assert httpx.head(f"{real_server.url}/api/blobs/{digest}").status_code == 404

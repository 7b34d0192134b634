"""llama.cpp's server as an upstream: chat (streamed and whole) and embeddings through
the front, on the packaged SmolLM2 GGUF.

Runs when ``LLAMA_SERVER`` names a ``llama-server`` binary (skipped otherwise, saying
so): one server for chat, and one with ``--embeddings`` (llama.cpp serves embeddings
only from a server started for them), each named with ``--alias``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from npu_proxy.testing import LiveServer, free_port, make_app, test_settings
from npu_proxy_openvino.models import embedded_models
from npu_proxy_upstream.testing import health_devices, probed, upstream_table, wait_until

LLAMA_SERVER = os.environ.get("LLAMA_SERVER", "")
pytestmark = pytest.mark.skipif(
    not LLAMA_SERVER, reason="LLAMA_SERVER does not name a llama-server binary")
CHAT = [{"role": "user", "content": "Say hello."}]


@contextlib.contextmanager
def llama_server(gguf: Path, alias: str, *flags: str) -> Iterator[str]:
    """``llama-server`` on a free port serving ``gguf`` as ``alias``; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [LLAMA_SERVER, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "-np", "2", "-c", "4096", "-t", "2", "--alias", alias, *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "llama-server exited"
            assert time.monotonic() < deadline, "llama-server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("llama-front")
    gguf = next(m.path for m in embedded_models(tmp) if m.name == "smollm2:135m")
    assert gguf is not None
    with llama_server(gguf, "smollm2:135m", "--jinja") as chat_url, \
            llama_server(gguf, "smollm2-embed", "--embeddings", "--pooling", "mean") as embed_url, \
            pytest.MonkeyPatch.context() as env:
        path = tmp / "upstreams.toml"
        path.write_text(upstream_table("llama", chat_url + "/v1")
                        + upstream_table("llama-embed", embed_url + "/v1"), "utf-8")
        env.setenv("NPU_PROXY_UPSTREAMS_FILE", str(path))
        app = make_app(test_settings(tmp), ["ollama", "openai", "upstream"])
        with LiveServer(app) as server:
            wait_until(lambda: probed(server.url))
            yield server


def test_models_of_both_servers_are_listed(front: LiveServer) -> None:
    tags = [m["name"] for m in httpx.get(front.url + "/api/tags").json()["models"]]
    assert "smollm2:135m" in tags and "smollm2-embed:latest" in tags
    assert health_devices(front.url)["upstream:llama"]["present"]


def test_chat_streamed_and_whole(front: LiveServer) -> None:
    client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2:135m", messages=CHAT, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    whole = raw.parse()
    assert raw.headers["x-npu-proxy-device"] == "upstream:llama"
    assert whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    parts = list(ollama.Client(host=front.url).chat(
        model="smollm2:135m", messages=CHAT, stream=True,
        options={"num_predict": 8, "temperature": 0}))
    assert "".join(p.message.content or "" for p in parts) == whole.choices[0].message.content
    assert parts[-1].eval_count == whole.usage.completion_tokens


def test_embeddings(front: LiveServer) -> None:
    client = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    vectors = client.embeddings.create(model="smollm2-embed", input=["a cat", "a dog"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
    assert vectors.data[0].embedding != vectors.data[1].embedding

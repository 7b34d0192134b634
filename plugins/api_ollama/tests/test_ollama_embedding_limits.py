"""The cap on embedding inputs (NPU_PROXY_MAX_EMBEDDING_INPUTS) in Ollama's shape, and a
full batch of vectors encoded off the event loop."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer

#: generous, so a loaded machine does not fail it (the issue's 100 ms is measured apart)
HEALTH_BOUND = 1.0


def inputs(count: int) -> list[str]:
    return [f"input number {i} with a few more words" for i in range(count)]


def test_one_input_above_the_cap_is_refused(server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=server.url).embed(model="mock-embed", input=inputs(2049))
    assert refused.value.status_code == 400
    assert "2048" in refused.value.error
    assert "NPU_PROXY_MAX_EMBEDDING_INPUTS" in refused.value.error


def test_the_cap_is_a_setting(start: Callable[..., LiveServer]) -> None:
    server = start(max_embedding_inputs=2)
    client = ollama.Client(host=server.url)
    assert len(client.embed(model="mock-embed", input=inputs(2)).embeddings) == 2
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="mock-embed", input=inputs(3))
    assert refused.value.status_code == 400 and "at most 2" in refused.value.error
    # the legacy endpoint embeds one prompt: always within any cap
    legacy = httpx.post(server.url + "/api/embeddings",
                        json={"model": "mock-embed", "prompt": "one"})
    assert legacy.status_code == 200 and len(legacy.json()["embedding"]) == 384


def test_health_answers_while_a_full_batch_is_encoded(server: LiveServer) -> None:
    body = {"model": "mock-embed", "input": inputs(2048)}
    httpx.post(server.url + "/api/embed", json={**body, "input": "load"}, timeout=60)
    answer, latencies = server.health_while(
        lambda: httpx.post(server.url + "/api/embed", json=body, timeout=120))
    assert answer.status_code == 200
    assert len(answer.json()["embeddings"]) == 2048
    assert max(latencies) < HEALTH_BOUND, f"/health took {max(latencies):.3f} s"

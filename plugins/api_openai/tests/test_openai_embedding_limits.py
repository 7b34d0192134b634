"""The cap on embedding inputs (NPU_PROXY_MAX_EMBEDDING_INPUTS), and a full batch of
vectors encoded off the event loop."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend

EMBEDDINGS = "/v1/embeddings"
#: /health may take this long while the batch is encoded: generous, so a loaded machine
#: does not fail it; the batch itself takes seconds (bench figures in the report).
HEALTH_BOUND = 1.0


def inputs(count: int) -> list[str]:
    return [f"input number {i} with a few more words" for i in range(count)]


def test_one_input_above_the_cap_is_refused(http: httpx.Client) -> None:
    refused = http.post(EMBEDDINGS, json={"model": "mock-embed", "input": inputs(2049)})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "input"
    assert "2048" in error["message"] and "NPU_PROXY_MAX_EMBEDDING_INPUTS" in error["message"]


def test_the_cap_is_a_setting(server_with: Callable[..., LiveServer]) -> None:
    with server_with(MockBackend(), max_embedding_inputs=3) as server:
        body = {"model": "mock-embed", "input": inputs(3)}
        assert httpx.post(server.url + EMBEDDINGS, json=body).status_code == 200
        refused = httpx.post(server.url + EMBEDDINGS, json={**body, "input": inputs(4)})
        assert refused.status_code == 400 and "at most 3" in refused.json()["error"]["message"]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_health_answers_while_a_full_batch_is_encoded(server: LiveServer, encoding: str) -> None:
    body = {"model": "mock-embed", "input": inputs(2048), "encoding_format": encoding}
    httpx.post(server.url + EMBEDDINGS, json={**body, "input": "load"}, timeout=60)
    answer, latencies = server.health_while(
        lambda: httpx.post(server.url + EMBEDDINGS, json=body, timeout=120))
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert len(data) == 2048 and [d["index"] for d in data] == list(range(2048))
    assert max(latencies) < HEALTH_BOUND, f"/health took {max(latencies):.3f} s"

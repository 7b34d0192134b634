"""The app over real HTTP: request ids, health, errors, and a responsive event loop."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from core_test_plugins import SimBackend, models_plugin, tiny_plugins
from npu_proxy.engine.events import EmbeddingFinished, GenerationFinished
from npu_proxy.testing import (
    LiveServer,
    RecordingSink,
    backend_plugin,
    make_app,
    test_settings,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """The core, a simulated device and the tiny dialect behind a real uvicorn server."""
    with LiveServer(make_app(test_settings(tmp_path), [], tiny_plugins(SimBackend()))) as live:
        yield live


def test_every_response_has_a_request_id(server: LiveServer) -> None:
    seen = set()
    for path in ("/health", "/health/devices", "/no/such/route"):
        response = httpx.get(server.url + path)
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"req_[0-9a-f]{24}", request_id)
        seen.add(request_id)
    assert len(seen) == 3


def test_unknown_routes_are_json_errors_not_fastapi_details(server: LiveServer) -> None:
    response = httpx.get(server.url + "/health/nope")
    assert response.status_code == 404
    assert "detail" not in response.json() and "error" in response.json()


def test_health_reports_devices_and_models(tmp_path: Path) -> None:
    npu = SimBackend("NPU", present=False)
    cpu = SimBackend("CPU")
    app = make_app(test_settings(tmp_path), [], {"devs": backend_plugin(npu, cpu),
                                                 "more": backend_plugin(SimBackend("MOCK"))})
    with LiveServer(app) as server:
        body = httpx.get(server.url + "/health").json()
        assert body["status"] == "ok"
        assert body["devices"]["NPU"] == {
            "present": False, "state": "absent", "error": "NPU not found (simulated)",
            "queue_depth": 0, "in_flight": 0, "max_parallel": 1, "last_failure": None,
        }
        assert body["devices"]["CPU"]["present"] is True
        devices = httpx.get(server.url + "/health/devices").json()["devices"]
        assert {d["device"]: d["present"] for d in devices} == {
            "CPU": True, "MOCK": True, "NPU": False
        }


def test_health_answers_while_a_model_loads(tmp_path: Path) -> None:
    slow = SimBackend("CPU", load_delay=3.0)
    settings = test_settings(tmp_path, device="CPU")
    app = make_app(settings, [], {"slow": backend_plugin(slow), "models": models_plugin()})
    with LiveServer(app) as server:
        loader = threading.Thread(target=server.call, args=(server.ctx.engine.load("mock", -1),))
        loader.start()
        states = []
        latencies = []
        while loader.is_alive():
            started = time.perf_counter()
            body = httpx.get(server.url + "/health").json()
            latencies.append(time.perf_counter() - started)
            states.append(body["status"])
            if body["models"] and body["models"][0]["state"] == "loading":
                assert body["models"][0]["loading_seconds"] >= 0
            time.sleep(0.02)
        loader.join()
        assert "loading" in states
        assert httpx.get(server.url + "/health").json()["models"][0]["state"] == "loaded"
        # Many answers arrived during a 3 s load: the loop was never blocked.
        assert len(latencies) > 5


def test_warm_up_loads_the_default_model_and_generates(tmp_path: Path) -> None:
    cpu = SimBackend("CPU", token_delay=0.001)
    settings = test_settings(tmp_path, warmup=True, default_model="mock", device="CPU")
    app = make_app(settings, [], {"cpu": backend_plugin(cpu), "models": models_plugin()})
    with LiveServer(app) as server:
        deadline = time.monotonic() + 10
        while cpu.counters.finished == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cpu.counters.finished == 1 and cpu.counters.tokens_emitted <= 16
        models = httpx.get(server.url + "/health").json()["models"]
        assert [(m["name"], m["device"], m["state"]) for m in models] == [
            ("mock:latest", "CPU", "loaded")
        ]


def test_warm_up_also_loads_the_embedding_model(tmp_path: Path) -> None:
    cpu = SimBackend("CPU", token_delay=0.001)
    recorder = RecordingSink()
    settings = test_settings(tmp_path, warmup=True, default_model="mock", device="CPU",
                             embedding_model="mock-embed", embedding_device="CPU")
    app = make_app(settings, [], {"cpu": backend_plugin(cpu), "models": models_plugin(),
                                  "sink": recorder.plugin()})
    with LiveServer(app) as server:
        deadline = time.monotonic() + 10
        while cpu.counters.embeddings == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cpu.counters.embeddings == 1 and cpu.counters.finished == 1
        models = httpx.get(server.url + "/health").json()["models"]
        assert sorted((m["name"], m["device"], m["state"]) for m in models) == [
            ("mock-embed:latest", "CPU", "loaded"), ("mock:latest", "CPU", "loaded")]
    embedded = recorder.of(EmbeddingFinished)
    assert [(e.model, e.inputs) for e in embedded] == [("mock-embed:latest", 1)]
    assert [e.model for e in recorder.of(GenerationFinished)] == ["mock:latest"]


def test_a_missing_embedding_model_fails_its_warm_up_only(tmp_path: Path) -> None:
    cpu = SimBackend("CPU", token_delay=0.001)
    settings = test_settings(tmp_path, warmup=True, default_model="mock", device="CPU",
                             embedding_model="absent-embed")
    app = make_app(settings, [], {"cpu": backend_plugin(cpu), "models": models_plugin()})
    with LiveServer(app) as server:
        deadline = time.monotonic() + 10
        while cpu.counters.finished == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cpu.counters.finished == 1 and cpu.counters.embeddings == 0
        assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_an_embedding_without_a_model_uses_the_default_embedding_model(tmp_path: Path) -> None:
    cpu = SimBackend("CPU", token_delay=0)
    settings = test_settings(tmp_path, embedding_model="mock-embed", embedding_device="CPU")
    with LiveServer(make_app(settings, [], tiny_plugins(cpu))) as server:
        reply = httpx.post(server.url + "/tiny/embed", json={"input": ["a b", "c"]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "mock-embed:latest"
        assert len(reply.json()["embeddings"]) == 2
        assert reply.headers["x-npu-proxy-device"] == "CPU"
        assert reply.headers["x-npu-proxy-token-count"] == "3"
        named = httpx.post(server.url + "/tiny/embed",
                           json={"model": "mock-embed", "input": ["a b", "c"]})
        assert named.json() == reply.json()
        # the default must be an embedding model: a chat model is a clear refusal
        wrong = make_app(test_settings(tmp_path, embedding_model="mock"), [], tiny_plugins(cpu))
    with LiveServer(wrong) as server:
        refused = httpx.post(server.url + "/tiny/embed", json={"input": ["x"]})
        assert refused.status_code == 400
        assert "does not support generate embeddings" in refused.json()["tiny_error"]


def test_route_headers_carry_the_wire_values(server: LiveServer) -> None:
    with httpx.stream("POST", server.url + "/tiny/generate", json={"prompt": "hi"}) as reply:
        lines = list(reply.iter_lines())
        assert reply.headers["x-npu-proxy-route-reason"] == "preferred_device_absent"
        assert reply.headers["x-npu-proxy-device"] == "SIM"
    assert lines[-1] == '{"done":true}' and len(lines) == 13
    models = httpx.get(server.url + "/health").json()["models"]
    assert [m["state"] for m in models] == ["loaded"]


def test_the_openapi_schema_builds_without_warnings(tmp_path: Path) -> None:
    import warnings

    app = make_app(test_settings(tmp_path), [], tiny_plugins(SimBackend()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = app.openapi()
    assert "/tiny/generate" in schema["paths"] and "/health" in schema["paths"]

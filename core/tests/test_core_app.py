"""The app over real HTTP: request ids, health, errors, and a responsive event loop."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
from npu_proxy.testing import LiveServer, backend_plugin, make_app, test_settings
from npu_proxy_mock.backend import MockBackend


def test_every_response_has_a_request_id(mock_server: LiveServer) -> None:
    seen = set()
    for path in ("/health", "/health/devices", "/no/such/route"):
        response = httpx.get(mock_server.url + path)
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"req_[0-9a-f]{24}", request_id)
        seen.add(request_id)
    assert len(seen) == 3


def test_unknown_routes_are_json_errors_not_fastapi_details(mock_server: LiveServer) -> None:
    response = httpx.get(mock_server.url + "/health/nope")
    assert response.status_code == 404
    assert "detail" not in response.json() and "error" in response.json()


def test_health_reports_devices_and_models(tmp_path: Path) -> None:
    npu = MockBackend("NPU", present=False)
    cpu = MockBackend("CPU")
    app = make_app(test_settings(tmp_path), ["mock"], {"devs": backend_plugin(npu, cpu)})
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
    slow = MockBackend("CPU", load_delay=3.0)
    settings = test_settings(tmp_path, device="CPU")
    app = make_app(settings, [], {"slow": backend_plugin(slow), "models": _mock_models()})
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


def _mock_models() -> object:
    from npu_proxy_mock.testing import models_plugin

    return models_plugin()


def test_warm_up_loads_the_default_model_and_generates(tmp_path: Path) -> None:
    cpu = MockBackend("CPU", token_delay=0.001)
    settings = test_settings(tmp_path, warmup=True, default_model="mock", device="CPU")
    app = make_app(settings, [], {"cpu": backend_plugin(cpu), "models": _mock_models()})
    with LiveServer(app) as server:
        deadline = time.monotonic() + 10
        while cpu.counters.finished == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cpu.counters.finished == 1 and cpu.counters.tokens_emitted <= 16
        models = httpx.get(server.url + "/health").json()["models"]
        assert [(m["name"], m["device"], m["state"]) for m in models] == [
            ("mock:latest", "CPU", "loaded")
        ]


def test_the_openapi_schema_builds_without_warnings(tmp_path: Path) -> None:
    import warnings

    app = make_app(test_settings(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = app.openapi()
    assert "/api/chat" in schema["paths"] and "/v1/messages" in schema["paths"]

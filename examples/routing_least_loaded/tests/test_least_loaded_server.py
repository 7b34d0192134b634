"""End to end: the installed ``least_loaded`` entry point routing real requests.

A live server with three simulated devices (the mock plugin's MOCK device plus an NPU
and a CPU): each held generation makes its device busier, so the next request goes
elsewhere, and the route the engine reports (the X-NPU-Proxy-* headers) says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import GenerationRequest, Message
from npu_proxy.testing import LiveServer, backend_plugin, make_app, test_settings
from npu_proxy_mock.backend import MockBackend
from npu_proxy_routing_least_loaded import LeastLoadedReason


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    devices = backend_plugin(MockBackend(device="NPU"), MockBackend(device="CPU"))
    app = make_app(
        test_settings(tmp_path, routing="least_loaded"),
        ["mock", "least_loaded"],
        inline={"devices": devices},
    )
    with LiveServer(app) as live:
        yield live


def chat(text: str) -> GenerationRequest:
    return GenerationRequest(model="mock", messages=(Message(role="user", content=text),))


def test_the_server_runs_the_selected_policy(server: LiveServer) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["routing"] == "least_loaded"
    assert set(health["devices"]) == {"MOCK", "NPU", "CPU"}


def test_busy_devices_send_requests_elsewhere(server: LiveServer) -> None:
    held: list[Generation] = []
    try:
        routes = []
        for i in range(4):
            generation = server.call(server.ctx.engine.generate(chat(f"request {i}")))
            held.append(generation)
            routes.append(generation.route.headers())
        devices = [r["X-NPU-Proxy-Device"] for r in routes]
        reasons = [r["X-NPU-Proxy-Route-Reason"] for r in routes]
        # Idle: the NPU wins the three-way tie; then CPU beats MOCK on the tie; then
        # MOCK is the only idle one; and it stays least loaded, since the mock plugin's
        # device has four slots (1/4 busy) while NPU and CPU have one each (1/1 busy).
        assert devices == ["NPU", "CPU", "MOCK", "MOCK"]
        assert reasons == [
            LeastLoadedReason.TIE,
            LeastLoadedReason.TIE,
            LeastLoadedReason.LEAST_LOADED,
            LeastLoadedReason.LEAST_LOADED,
        ]
        slots = {d: s["max_parallel"] for d, s in httpx.get(f"{server.url}/health").json()[
            "devices"].items()}
        assert slots == {"NPU": 1, "CPU": 1, "MOCK": 4}
    finally:
        for generation in held:
            server.call(generation.aclose())

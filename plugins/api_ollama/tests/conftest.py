"""Fixtures: the Ollama dialect behind a real uvicorn server, on a simulated device."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.backend import Backend
from npu_proxy.testing import LiveServer, inline_plugin, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, mock_models


def device_plugin(backend: Backend) -> Any:
    """An inline plugin registering ``backend`` and the mock's models."""
    return inline_plugin(
        npu_proxy_register_backends=lambda register: register(backend),
        npu_proxy_register_models=lambda register: [register(m) for m in mock_models()],
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start a server: ``start(backend=None, formats=False, **settings)``; stopped after the test.

    With ``formats``, the OpenVINO plugin's model formats are loaded (GGUF, IR, ONNX),
    so ``create`` and ``pull`` can read real model files; the simulated device serves them.
    """
    servers: list[LiveServer] = []

    def run(backend: MockBackend | None = None, formats: bool = False,
            **overrides: Any) -> LiveServer:
        backend = backend or MockBackend(token_delay=0.001)
        settings = test_settings(tmp_path, **overrides)
        inline: dict[str, Any] = {"device": device_plugin(backend)}
        if formats:
            from npu_proxy_openvino import formats as openvino_formats

            inline["formats"] = openvino_formats
        app = make_app(settings, plugins=["ollama"], inline=inline)
        server = LiveServer(app).__enter__()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def server(start: Callable[..., LiveServer]) -> LiveServer:
    return start()


@pytest.fixture
def device(server: LiveServer) -> MockBackend:
    """The simulated device behind ``server`` (its counters show what reached it)."""
    backend = server.ctx.engine.backends["MOCK"]
    assert isinstance(backend, MockBackend)
    return backend


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def wait_for() -> Callable[[Callable[[], bool], str], None]:
    """Poll a condition until it holds (the bound only stops a hung test)."""
    return _wait_for


@pytest.fixture
def store_snapshot(tmp_path: Path) -> Callable[[], set[Path]]:
    """Every path under the test's temporary folder, to prove nothing was touched."""
    return lambda: set(tmp_path.rglob("*"))

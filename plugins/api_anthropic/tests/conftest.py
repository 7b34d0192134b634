"""Fixtures: a real uvicorn server with the Anthropic dialect and the mock backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, MockCounters
from npu_proxy_mock.testing import single_device_app


@pytest.fixture
def anthropic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude names map to the mock chat model; the mock streams quickly."""
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", "claude-*=mock:latest")
    monkeypatch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0.001")


@pytest.fixture
def server(tmp_path: Path, anthropic_env: None) -> Iterator[LiveServer]:
    with LiveServer(make_app(test_settings(tmp_path), plugins=["mock", "anthropic"])) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)


@pytest.fixture
def counters(server: LiveServer) -> MockCounters:
    backend: MockBackend = server.ctx.engine.backends["MOCK"]
    return backend.counters


@pytest.fixture
def server_with(tmp_path: Path, anthropic_env: None) -> Callable[..., LiveServer]:
    """``server_with(backend, **settings)``: a server whose only device is ``backend``."""
    return lambda backend, **settings: _server_with(tmp_path, backend, **settings)


def _server_with(tmp_path: Path, backend: MockBackend, **settings: Any) -> LiveServer:
    return LiveServer(single_device_app(tmp_path, backend, ["anthropic"], **settings))


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, what)``: poll until it holds (a hang guard, not a timing test)."""
    return _wait_for


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)

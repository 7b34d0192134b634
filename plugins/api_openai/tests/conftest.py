"""Fixtures: a real uvicorn server with the OpenAI dialect and the mock backend, and the
official ``openai`` clients pointed at it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, MockCounters
from npu_proxy_mock.testing import single_device_app

CHAT_MODEL = "mock"
EMBED_MODEL = "mock-embed"


@pytest.fixture
def fast_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock streams quickly; tests that need a slow device build their own."""
    monkeypatch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0.001")


@pytest.fixture
def server(tmp_path: Path, fast_mock: None) -> Iterator[LiveServer]:
    with LiveServer(make_app(test_settings(tmp_path), plugins=["mock", "openai"])) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
async def aclient(server: LiveServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    async with client:
        yield client


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    """A plain HTTP client, for bodies the SDK would refuse to send."""
    with httpx.Client(base_url=server.url, timeout=30) as raw:
        yield raw


@pytest.fixture
def counters(server: LiveServer) -> MockCounters:
    backend: MockBackend = server.ctx.engine.backends["MOCK"]
    return backend.counters


@pytest.fixture
def server_with(tmp_path: Path, fast_mock: None) -> Callable[..., LiveServer]:
    """``server_with(backend, **settings)``: a server whose only device is ``backend``."""
    return lambda backend, **settings: _server_with(tmp_path, backend, **settings)


def _server_with(tmp_path: Path, backend: MockBackend, **settings: Any) -> LiveServer:
    return LiveServer(single_device_app(tmp_path, backend, ["openai"], **settings))


def wait_for(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Poll until ``condition`` holds (a guard against hangs, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """The response is an OpenAI-shaped error with ``status``; returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    expected_type = "server_error" if status >= 500 else "invalid_request_error"
    assert error["type"] == expected_type, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., None]:
    """``wait_for(condition, what)``."""
    return wait_for


@pytest.fixture(name="expect_error")
def expect_error_fixture() -> Callable[..., dict]:
    """``expect_error(response, status, param=None)`` -> the error object."""
    return assert_openai_error

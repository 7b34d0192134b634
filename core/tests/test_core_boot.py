"""Staged start: ``/health`` answers while the server composes, then the composed app serves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from core_test_plugins import INSTALLED_NAME, SimBackend, install_as_distribution, tiny_plugins
from npu_proxy.app import StartupError
from npu_proxy.boot import StagedApp, StagedServer
from npu_proxy.testing import LiveServer, free_port, make_app, test_settings
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send


class RecordingApp:
    """A composed app stand-in: answers every request with its path, records lifespan."""

    def __init__(self, fail_startup: str | None = None) -> None:
        self.events: list[str] = []
        self.fail_startup = fail_startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed",
                                    "message": self.fail_startup})
                        return
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": f"composed {scope['path']}".encode()})


class Gate:
    """A compose function that blocks until released, then returns (or raises)."""

    def __init__(self, result: Any) -> None:
        self.released = threading.Event()
        self.entered = threading.Event()
        self.result = result

    def __call__(self) -> Any:
        self.entered.set()
        if not self.released.wait(30):
            raise TimeoutError("the test never released composition")
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_health_answers_starting_while_composing_then_requests_reach_the_app(
        tmp_path: Path) -> None:
    composed = RecordingApp()
    gate = Gate(composed)
    staged = StagedApp(gate, test_settings(tmp_path))
    with LiveServer(staged) as server:
        assert gate.entered.wait(10)
        early = httpx.get(server.url + "/health", timeout=5)
        assert early.status_code == 200
        body = early.json()
        assert body["status"] == "starting"
        assert body["devices"] == {} and body["models"] == []

        answers: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: answers.append(httpx.get(server.url + "/api/tags", timeout=30)))
        waiter.start()
        time.sleep(0.3)
        assert answers == []  # held until the app is composed, not refused
        gate.released.set()
        waiter.join(30)
        assert answers[0].status_code == 200
        assert answers[0].text == "composed /api/tags"
        assert staged.ready
        assert httpx.get(server.url + "/health", timeout=5).text == "composed /health"
    assert composed.events == ["lifespan.startup", "lifespan.shutdown"]


def test_early_health_keeps_the_host_check(tmp_path: Path) -> None:
    gate = Gate(RecordingApp())
    with LiveServer(StagedApp(gate, test_settings(tmp_path))) as server:
        refused = httpx.get(server.url + "/health", headers={"Host": "rebind.example"})
        assert refused.status_code == 403
        assert "Host header not allowed" in refused.json()["error"]
        gate.released.set()


def test_a_configuration_error_stops_with_its_message(tmp_path: Path) -> None:
    failed = threading.Event()
    gate = Gate(StartupError("unknown routing policy 'nosuch' (NPU_PROXY_ROUTING)"))
    staged = StagedApp(gate, test_settings(tmp_path), expected=(StartupError,),
                       on_failure=failed.set)
    with LiveServer(staged) as server:
        gate.released.set()
        assert failed.wait(10)
        assert staged.error == "unknown routing policy 'nosuch' (NPU_PROXY_ROUTING)"
        for path in ("/api/tags", "/health"):
            response = httpx.get(server.url + path, timeout=5)
            assert response.status_code == 503
            assert response.json() == {
                "error": "the server failed to start: unknown routing policy 'nosuch' "
                         "(NPU_PROXY_ROUTING)"}


def test_a_failing_app_startup_is_reported(tmp_path: Path) -> None:
    failed = threading.Event()
    staged = StagedApp(lambda: RecordingApp(fail_startup="store is unreadable"),
                       test_settings(tmp_path), on_failure=failed.set)
    with LiveServer(staged):
        assert failed.wait(10)
    assert staged.error == "store is unreadable"
    assert not staged.ready


def test_a_starlette_lifespan_that_raises_is_reported_by_its_last_line(
        tmp_path: Path) -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the model store is unreadable")
        yield

    failed = threading.Event()
    staged = StagedApp(lambda: Starlette(lifespan=lifespan), test_settings(tmp_path),
                       on_failure=failed.set)
    with LiveServer(staged):
        assert failed.wait(10)
    assert staged.error == "RuntimeError: the model store is unreadable"


def test_shutdown_during_composition_waits_then_shuts_the_app_down(tmp_path: Path) -> None:
    composed = RecordingApp()
    gate = Gate(composed)
    server = LiveServer(StagedApp(gate, test_settings(tmp_path)))
    with server:
        assert gate.entered.wait(10)
        threading.Timer(0.3, gate.released.set).start()
    assert composed.events == ["lifespan.startup", "lifespan.shutdown"]


def test_the_composed_simulated_server_serves_through_the_stage(tmp_path: Path) -> None:
    settings = test_settings(tmp_path)
    staged = StagedApp(lambda: make_app(settings, [], tiny_plugins(SimBackend())), settings)
    with LiveServer(staged) as server:
        wait_for(lambda: staged.ready)
        tags = httpx.get(server.url + "/tiny/models", timeout=10)
        assert tags.status_code == 200
        assert any(name for name in tags.json()["models"])
        health = httpx.get(server.url + "/health", timeout=10).json()
        assert health["devices"]  # the composed report, not the early one


def test_the_staged_server_composes_only_once_the_socket_is_bound(tmp_path: Path) -> None:
    port = free_port()
    seen: list[int] = []

    def compose() -> RecordingApp:
        # the listener must already answer: composition's imports never delay the bind
        seen.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code)
        return RecordingApp()

    staged = StagedApp(compose, test_settings(tmp_path), begin_on_startup=False)
    server = StagedServer(uvicorn.Config(staged, host="127.0.0.1", port=port,
                                         log_level="warning"), staged)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: staged.ready)
        assert seen == [200]
    finally:
        server.should_exit = True
        thread.join(30)


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``npu-proxy serve`` composed of the core and its test plugins (installed into a
    throwaway site folder), whatever else is installed."""
    site = install_as_distribution(tmp_path)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    environ = {**os.environ, "NPU_PROXY_REAL_INFERENCE": "0", "PYTHONPATH": path,
               "NPU_PROXY_MODEL_PATH": str(tmp_path / "models"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "npu_proxy", "--plugins", INSTALLED_NAME, "serve",
         "--host", "127.0.0.1", *args],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_exits_1_naming_a_bad_routing_policy(tmp_path: Path) -> None:
    process = serve(tmp_path, "--port", str(free_port()), "--routing", "nosuch")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "unknown routing policy 'nosuch'" in err
    assert "Traceback" not in err


@pytest.mark.timeout(180)
def test_serve_answers_health_and_then_requests(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path, "--port", str(port), NPU_PROXY_LOG_LEVEL="WARNING")
    url = f"http://127.0.0.1:{port}"
    try:
        statuses: list[str] = []

        def healthy() -> bool:
            assert process.poll() is None, process.communicate()[1]
            try:
                statuses.append(httpx.get(url + "/health", timeout=5).json()["status"])
            except httpx.TransportError:
                return False
            return statuses[-1] == "ok"

        wait_for(healthy, timeout=120)
        tags = httpx.get(url + "/tiny/models", timeout=30)
        assert tags.status_code == 200
        assert tags.json()["models"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err
    assert statuses[-1] == "ok"


@pytest.mark.timeout(180)
def test_a_stop_ends_a_long_stream_after_the_grace_period(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path, "--port", str(port), NPU_PROXY_SHUTDOWN_GRACE="1",
                    NPU_PROXY_TINY_TOKEN_DELAY="2", NPU_PROXY_LOG_LEVEL="WARNING")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and _status(url) == "ok", timeout=120)
        lines: list[str] = []
        body = {"prompt": "Hi"}
        with httpx.stream("POST", url + "/tiny/generate", json=body, timeout=60) as response:
            stream = response.iter_lines()
            lines.append(next(stream))  # the stream runs: 12 pieces, 2 s apart
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(httpx.HTTPError):
                lines.extend(stream)
        process.wait(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert took < 15, took  # the grace (1 s) and the shutdown, not the 24 s stream
    assert len(lines) < 12
    assert '"done":true' not in lines[-1]  # ended by the stop, not finished


def _status(url: str) -> str | None:
    try:
        return str(httpx.get(url + "/health", timeout=5).json()["status"])
    except httpx.TransportError:
        return None

"""``npu-proxy`` without a command serves, taking every ``serve`` option at the top level."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from core_test_plugins import INSTALLED_NAME, install_as_distribution
from npu_proxy.testing import free_port, wait_healthy


def _environ(tmp_path: Path, **env: str) -> dict[str, str]:
    """The core and its test plugins (installed into a throwaway site folder), no
    ``NPU_PROXY_*`` variable from the caller's shell."""
    site = install_as_distribution(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**base, "PYTHONPATH": path, "NPU_PROXY_REAL_INFERENCE": "0",
            "NPU_PROXY_LOG_LEVEL": "WARNING", "NPU_PROXY_MODEL_PATH": str(tmp_path / "models"),
            **env}


@contextlib.contextmanager
def running(tmp_path: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m npu_proxy ARGS`` as a process, stopped with SIGTERM afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "npu_proxy", *args],
                               env=_environ(tmp_path, **env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err, err


@pytest.mark.timeout(180)
def test_no_command_serves_with_host_and_port_at_the_top_level(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, "--plugins", INSTALLED_NAME, "--host", "127.0.0.1",
                 "--port", str(port)) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(process, url)
        assert httpx.get(url + "/tiny/models", timeout=30).json()["models"]


@pytest.mark.timeout(180)
def test_no_command_and_no_option_serves_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, NPU_PROXY_PLUGINS=INSTALLED_NAME, NPU_PROXY_HOST="127.0.0.1",
                 NPU_PROXY_PORT=str(port)) as process:
        wait_healthy(process, f"http://127.0.0.1:{port}")


@pytest.mark.timeout(180)
def test_serve_stays_and_its_own_options_win_over_the_top_level(tmp_path: Path) -> None:
    ignored, port = free_port(), free_port()
    with running(tmp_path, "--plugins", INSTALLED_NAME, "--host", "127.0.0.1",
                 "--port", str(ignored), "serve", "--port", str(port)) as process:
        wait_healthy(process, f"http://127.0.0.1:{port}")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{ignored}/health", timeout=2)


def test_server_options_before_another_command_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "npu_proxy", "--plugins", INSTALLED_NAME, "--port", "1",
         "--mock", "devices"],
        env=_environ(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ("--port, --real-inference configure the server: give them without a command, "
            "or after 'serve'") in done.stderr


def test_help_lists_the_commands_and_the_server_options(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "npu_proxy", "--help"],
                          env=_environ(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("serve", "plugins", "devices", "doctor"):
        assert f"\n  {name} " in done.stdout
    for option in ("--host", "--port", "--plugins", "--model-path", "--real-inference"):
        assert option in done.stdout

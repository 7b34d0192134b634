"""``npu-proxy --plugins ollama,mock`` (no command): the documented way to compose a
server, run as users run it, answers an Ollama client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ollama
from npu_proxy.testing import free_port, wait_healthy


def test_plugins_without_a_command_serve(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    env["NPU_PROXY_MODEL_PATH"] = str(tmp_path / "models")
    server = subprocess.Popen(
        [sys.executable, "-m", "npu_proxy", "--plugins", "ollama,mock", "--mock",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, url)
        client = ollama.Client(host=url)
        assert "mock:latest" in [m.model for m in client.list().models]
        assert client.generate(model="mock", prompt="hello").done
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err

"""The ``npu-proxy`` command line as users run it (a real process): a plugin's command
against the real server, and a command whose plugin the ``--plugins`` selection leaves
out, which is named with its plugin instead of failing on a 404."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
from npu_proxy.testing import LiveServer, free_port, wait_healthy


def npu_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    return subprocess.run([sys.executable, "-m", "npu_proxy", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_command_of_a_plugin_left_out_names_the_plugin() -> None:
    done = npu_proxy("--plugins", "openai,openvino,openvino-cpu", "list")
    assert done.returncode == 1
    assert done.stderr == (
        "Error: 'list' is provided by the plugin 'ollama' (npu-proxy-ollama), which is not "
        "loaded; add it to --plugins\n")
    assert done.stdout == ""


def test_a_command_no_plugin_provides_is_clicks_usual_error() -> None:
    done = npu_proxy("--plugins", "openai", "frobnicate")
    assert done.returncode == 2
    assert "Error: No such command 'frobnicate'." in done.stderr


def test_the_ollama_plugins_list_against_the_real_server(real_server: LiveServer) -> None:
    done = npu_proxy("list", "--url", real_server.url)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(row.startswith("smollm2:135m ") for row in rows)
    help_text = npu_proxy("--help").stdout
    for name in ("pull", "list", "run", "serve", "doctor"):
        assert f"\n  {name} " in help_text


def test_a_server_composed_without_the_ollama_plugin_serves_openai(tmp_path: Path) -> None:
    """``npu-proxy --plugins openai,openvino,openvino-cpu serve``: the OpenAI API on the
    real CPU backend, and no Ollama route."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    env["NPU_PROXY_MODEL_PATH"] = str(tmp_path / "models")
    server = subprocess.Popen(
        [sys.executable, "-m", "npu_proxy", "--plugins", "openai,openvino,openvino-cpu",
         "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2:135m", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Say hello."}])
        reply = raw.parse()
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert raw.headers["x-npu-proxy-device"] == "CPU"
        assert httpx.post(url + "/api/chat", json={"model": "smollm2:135m"}).status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=30)

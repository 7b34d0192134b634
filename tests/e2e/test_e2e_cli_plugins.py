"""The ``npu-proxy`` command line as users run it (a real process): a plugin's command
against the real server, and a command whose plugin the ``--plugins`` selection leaves
out, which is named with its plugin instead of failing on a 404."""

from __future__ import annotations

import os
import subprocess
import sys

from npu_proxy.testing import LiveServer


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

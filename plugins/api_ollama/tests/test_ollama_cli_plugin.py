"""The model commands reach ``npu-proxy`` through the plugin's command hook, cheaply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from npu_proxy.cli import main
from npu_proxy.testing import LiveServer, make_app, test_settings

REGISTER_AND_REPORT = """
import sys
import npu_proxy_ollama.plugin as plugin
names = []
plugin.npu_proxy_register_commands(lambda command: names.append(command.name))
print(",".join(names), "httpx" in sys.modules)
"""


def test_registering_the_commands_does_not_import_the_http_client() -> None:
    done = subprocess.run([sys.executable, "-c", REGISTER_AND_REPORT], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["pull,list,ls,show,rm,cp,ps,create,run", "False"]


def test_the_core_command_line_runs_the_plugins_list(tmp_path: Path) -> None:
    with LiveServer(make_app(test_settings(tmp_path), ["mock", "ollama"])) as live:
        result = CliRunner().invoke(main, ["--plugins", "ollama", "list", "--url", live.url])
    assert result.exit_code == 0, result.output
    assert result.output.split()[:4] == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert "mock:latest" in result.output


def test_help_and_plugins_name_the_commands() -> None:
    listed = CliRunner().invoke(main, ["--plugins", "ollama", "--help"])
    assert listed.exit_code == 0
    for name in ("pull", "list", "run", "serve", "doctor"):
        assert f"\n  {name} " in listed.output
    shown = CliRunner().invoke(main, ["--plugins", "ollama", "plugins", "--json"])
    assert shown.exit_code == 0, shown.output
    assert '"Command:run"' in shown.output

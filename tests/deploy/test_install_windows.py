"""scripts/install_windows.ps1, checked without Windows: it parses (with PowerShell when
``pwsh`` is installed, else with the tree-sitter PowerShell grammar when that is), every
function that changes the machine honours -WhatIf, and its settings list matches the
Linux installer's and the core's Settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from npu_proxy.engine.routing import TokenThresholdSettings
from npu_proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install_windows.ps1"
LINUX_SCRIPT = ROOT / "scripts" / "install_linux.sh"
TEXT = SCRIPT.read_text("utf-8")

#: Commands that change the machine; a function using one must ask ShouldProcess first.
MUTATING = (
    "New-Item", "Remove-Item", "Move-Item", "WriteAllText", "icacls", "Register-ScheduledTask",
    "Unregister-ScheduledTask", "Start-ScheduledTask", "Stop-ScheduledTask", "Start-Service",
    "Stop-Service", "Stop-Process", "New-NetFirewallRule", "Remove-NetFirewallRule", "nssm",
    "sc.exe",
)


def launcher() -> str:
    """The start-npu-proxy.ps1 the installer writes (a here-string inside the script)."""
    match = re.search(r"^\$LauncherContent = @'\n(.*?)\n'@$", TEXT, re.MULTILINE | re.DOTALL)
    assert match, "the launcher here-string is missing"
    return match.group(1)


def functions(text: str) -> dict[str, str]:
    """Top-level function name -> body (up to the next top-level function or statement)."""
    parts = re.split(r"^function ([\w-]+)", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="pwsh (PowerShell 7) is not installed")
@pytest.mark.parametrize("which", ["installer", "launcher"])
def test_powershell_parses_it(which: str, tmp_path: Path) -> None:
    path = SCRIPT if which == "installer" else tmp_path / "start-npu-proxy.ps1"
    if which == "launcher":
        path.write_text(launcher(), "utf-8")
    command = (
        "$errors = $null; "
        f"[void][System.Management.Automation.Language.Parser]::ParseFile('{path}', "
        "[ref]$null, [ref]$errors); "
        "$errors | ForEach-Object { $_.ToString() }; exit $errors.Count"
    )
    result = subprocess.run(["pwsh", "-NoProfile", "-NonInteractive", "-Command", command],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("which", ["installer", "launcher"])
def test_tree_sitter_parses_it(which: str) -> None:
    tree_sitter = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_powershell")
    parser = tree_sitter.Parser(tree_sitter.Language(grammar.language()))
    source = (TEXT if which == "installer" else launcher()).encode()
    errors: list[str] = []

    def walk(node: object) -> None:
        if node.type == "ERROR" or node.is_missing:  # type: ignore[attr-defined]
            row = node.start_point[0] + 1  # type: ignore[attr-defined]
            errors.append(f"line {row}: {source.splitlines()[row - 1].decode()!r}")
        for child in node.children:  # type: ignore[attr-defined]
            walk(child)

    walk(parser.parse(source).root_node)
    assert not errors, "\n".join(errors)


def test_every_change_honours_whatif() -> None:
    assert "[CmdletBinding(SupportsShouldProcess = $true)]" in TEXT
    for name, body in functions(TEXT.split("$LauncherContent = @'")[0]
                                + TEXT.split("\n'@\n", 1)[1]).items():
        used = [cmd for cmd in MUTATING if re.search(rf"\b{re.escape(cmd)}\b", body)]
        if used:
            assert "ShouldProcess" in body, f"{name} uses {used} without ShouldProcess"


def test_firewall_rule_is_limited_to_the_wsl_subnet() -> None:
    assert "Get-NetIPAddress -InterfaceAlias 'vEthernet (WSL*)'" in TEXT
    rule = re.search(r"New-NetFirewallRule .*?\| Out-Null", TEXT, re.DOTALL)
    assert rule
    assert "-RemoteAddress $subnet" in rule.group(0)
    assert "-Direction Inbound" in rule.group(0) and "-LocalPort $Port" in rule.group(0)


def test_task_runs_forever_and_uninstall_exists() -> None:
    # Task Scheduler stops a task after 72 hours unless told otherwise.
    assert "-ExecutionTimeLimit ([TimeSpan]::Zero)" in TEXT
    for switch in ("[switch]$Uninstall", "[switch]$Purge", "[switch]$UseNssm"):
        assert switch in TEXT


def _windows_settings() -> dict[str, str]:
    return dict(re.findall(r"^\s*@\('([A-Z_]+)', '([^']*)',", TEXT, re.MULTILINE))


def _linux_settings() -> dict[str, str]:
    text = LINUX_SCRIPT.read_text("utf-8")
    return dict(re.findall(r'^\s*"([A-Z_]+)\|([^|]*)\|', text, re.MULTILINE))


def test_settings_match_linux_and_core() -> None:
    windows, linux = _windows_settings(), _linux_settings()
    fields = {name.upper() for cls in (Settings, TokenThresholdSettings)
              for name in cls.model_fields}
    # MODEL_PATH is written uncommented, pointing into the installation; the rest are the
    # core's variables and the ones the Linux installer documents for the plugins.
    assert fields <= set(windows) | {"MODEL_PATH"}
    assert set(windows) | {"MODEL_PATH"} == set(linux)
    assert "NPU_PROXY_MODEL_PATH=$ModelsDir" in TEXT
    for name, value in windows.items():
        assert value == linux[name].replace("$PORT_DEFAULT", "11435"), name

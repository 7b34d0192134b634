"""scripts/install_linux.sh, run into a temporary root: what it writes, and that it is
idempotent, keeps the operator's settings, dry-runs and uninstalls cleanly.

Every run uses ``--prefix`` (no user, no systemctl) and ``--no-venv`` (no Python
install), so the whole module takes a few seconds. The unit is checked by
``systemd-analyze`` where it exists.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from npu_proxy.engine.routing import TokenThresholdSettings
from npu_proxy.settings import Settings
from npu_proxy_openvino import OpenVINOSettings
from npu_proxy_openvino_npu import NpuSettings
from pydantic_settings import BaseSettings

#: What the core ships: its own settings and its built-in routing policy's.
CORE_SETTINGS = (Settings, TokenThresholdSettings)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install_linux.sh"
UNIT = "etc/systemd/system/npu-proxy.service"
ENV = "etc/npu-proxy/env"
MODELS = "var/lib/npu-proxy/models"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def install(prefix: Path, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the script into ``prefix`` without the Python install."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "--prefix", str(prefix), "--no-venv", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mode, sha256 or '' for a directory) for everything under root."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (mode, digest)
    return found


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given in the unit (sections merged, comments dropped)."""
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key, []).append(value)
    return directives


#: Plugins whose own variables the installers document next to the core's.
PLUGIN_SETTINGS: tuple[type[BaseSettings], ...] = (NpuSettings, OpenVINOSettings)


def owner(name: str) -> type[BaseSettings] | None:
    """The settings class (the core's or a plugin's) that reads ``NPU_PROXY_<name>``."""
    for cls in (*CORE_SETTINGS, *PLUGIN_SETTINGS):
        if name.lower() in cls.model_fields:
            return cls
    return None


def documented_settings(text: str) -> dict[str, str]:
    """``NAME`` -> value of every ``# NPU_PROXY_NAME=value`` line."""
    return dict(re.findall(r"^# NPU_PROXY_([A-Z_]+)=(.*)$", text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh install, shared by the read-only checks."""
    prefix = tmp_path_factory.mktemp("root")
    install(prefix)
    return prefix


# --- what a fresh install writes ---------------------------------------------------


def test_writes_the_unit_env_file_and_directories(installed: Path) -> None:
    assert (installed / UNIT).is_file()
    assert (installed / ENV).is_file()
    assert (installed / MODELS).is_dir()
    assert (installed / "var/cache/npu-proxy").is_dir()
    # --no-venv: nothing Python was installed.
    assert not (installed / "opt/npu-proxy/venv").exists()


def test_unit_is_hardened_and_starts_the_venv_server(installed: Path) -> None:
    d = unit_directives((installed / UNIT).read_text())
    expected = {
        "ExecStart": "/opt/npu-proxy/venv/bin/npu-proxy serve",
        "User": "npu-proxy",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "EnvironmentFile": "/etc/npu-proxy/env",
        "ReadWritePaths": "/var/lib/npu-proxy",
        "DevicePolicy": "closed",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}: {d.get(key)}"
    assert "NPU_PROXY_MODEL_PATH=/var/lib/npu-proxy/models" in d["Environment"]
    # The NPU (/dev/accel/accel*) and the GPU (/dev/dri/*), by device class.
    assert set(d["DeviceAllow"]) == {"char-accel rw", "char-drm rw"}
    # The accelerators are devices: a private /dev would hide them.
    assert "PrivateDevices" not in d
    assert "PrivateUsers" not in d  # device access goes through the render group


def test_env_file_is_private_and_all_commented(installed: Path) -> None:
    env = installed / ENV
    assert stat.S_IMODE(env.stat().st_mode) == 0o640
    assert stat.S_IMODE((installed / "etc/npu-proxy").stat().st_mode) == 0o750
    lines = [line for line in env.read_text().splitlines() if line.strip()]
    assert lines and all(line.startswith("#") for line in lines)


def test_env_file_documents_every_core_setting(installed: Path) -> None:
    documented = documented_settings((installed / ENV).read_text())
    fields = {name.upper() for cls in CORE_SETTINGS for name in cls.model_fields}
    assert fields <= set(documented)
    # The rest are the NPU's and the OpenVINO backends' own variables.
    assert all(owner(name) is not None for name in documented), documented


def test_env_file_shows_the_real_defaults(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncommenting a line unchanged must not change the server's behaviour."""
    for name in list(os.environ):
        if name.startswith("NPU_PROXY_"):
            monkeypatch.delenv(name)
    documented = documented_settings((installed / ENV).read_text())
    assert documented["MODEL_PATH"] == "/var/lib/npu-proxy/models"  # the service's store
    for name, value in documented.items():
        if name in ("MODEL_PATH", "PLUGINS"):  # PLUGINS shows an example, not the default
            continue
        cls = owner(name)
        assert cls is not None, name
        defaults = cls()
        monkeypatch.setenv(f"NPU_PROXY_{name}", value)
        field = name.lower()
        assert getattr(cls(), field) == getattr(defaults, field), name
        monkeypatch.delenv(f"NPU_PROXY_{name}")


# --- running it again --------------------------------------------------------------


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    install(tmp_path)
    before = snapshot(tmp_path)
    second = install(tmp_path)
    assert snapshot(tmp_path) == before
    assert "wrote" not in second.stdout
    assert f"unchanged {tmp_path / ENV}" in second.stdout


def test_existing_settings_are_kept_and_missing_ones_appended(tmp_path: Path) -> None:
    env = tmp_path / ENV
    env.parent.mkdir(parents=True)
    mine = "NPU_PROXY_PORT=9999\nNPU_PROXY_API_KEY=operator-secret\n# NPU_PROXY_HOST=127.0.0.1\n"
    env.write_text(mine)
    env.chmod(0o644)
    install(tmp_path)
    text = env.read_text()
    assert text.startswith(mine)
    appended = documented_settings(text[len(mine):])
    assert "PORT" not in appended and "API_KEY" not in appended and "HOST" not in appended
    assert "DEVICE" in appended
    assert stat.S_IMODE(env.stat().st_mode) == 0o640  # the secret is no longer world-readable
    before = snapshot(tmp_path)
    install(tmp_path)
    assert snapshot(tmp_path) == before


def test_generate_api_key_once(tmp_path: Path) -> None:
    install(tmp_path, "--generate-api-key")
    keys = re.findall(r"^NPU_PROXY_API_KEY=(\S+)$", (tmp_path / ENV).read_text(), re.MULTILINE)
    assert len(keys) == 1 and len(keys[0]) >= 40
    before = snapshot(tmp_path)
    install(tmp_path, "--generate-api-key")
    assert snapshot(tmp_path) == before  # an existing key is never replaced


# --- dry run and uninstall ---------------------------------------------------------


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    result = install(fresh, "--dry-run")
    assert not fresh.exists()
    assert "would create" in result.stdout
    existing = tmp_path / "existing"
    install(existing)
    (existing / UNIT).write_text("[Service]\nExecStart=/bin/false\n")
    before = snapshot(existing)
    result = install(existing, "--dry-run")
    assert snapshot(existing) == before
    assert "would update" in result.stdout  # and shows the diff
    assert "+ExecStart=/opt/npu-proxy/venv/bin/npu-proxy serve" in result.stdout
    install(existing, "--uninstall", "--purge", "--dry-run")
    assert snapshot(existing) == before


def test_uninstall_keeps_models_and_settings(tmp_path: Path) -> None:
    install(tmp_path)
    model = tmp_path / MODELS / "smollm2--135m" / "manifest.json"
    model.parent.mkdir()
    model.write_text("{}")
    (tmp_path / "opt/npu-proxy/venv/bin").mkdir(parents=True)  # stands in for the venv
    install(tmp_path, "--uninstall")
    assert not (tmp_path / UNIT).exists()
    assert not (tmp_path / "opt/npu-proxy").exists()
    assert model.is_file()
    assert (tmp_path / ENV).is_file()
    # Installing again over the kept files works and keeps them.
    install(tmp_path)
    assert (tmp_path / UNIT).is_file() and model.is_file()


def test_purge_removes_everything(tmp_path: Path) -> None:
    install(tmp_path)
    install(tmp_path, "--uninstall", "--purge")
    assert not (tmp_path / UNIT).exists()
    assert not (tmp_path / "etc/npu-proxy").exists()
    assert not (tmp_path / "var/lib/npu-proxy").exists()
    assert not (tmp_path / "var/cache/npu-proxy").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    result = install(tmp_path, "--frobnicate", check=False)
    assert result.returncode != 0 and "unknown option" in result.stderr
    result = install(tmp_path, "--purge", check=False)
    assert result.returncode != 0 and "--uninstall" in result.stderr
    assert not tmp_path.joinpath("etc").exists()


# --- external checkers, where installed --------------------------------------------


def _unit_for_systemd(installed: Path, tmp_path: Path) -> Path:
    """The unit with an existing program in ExecStart (the venv is not installed here)."""
    text = (installed / UNIT).read_text().replace(
        "ExecStart=/opt/npu-proxy/venv/bin/npu-proxy ", f"ExecStart={shutil.which('true')} "
    )
    unit = tmp_path / "npu-proxy.service"
    unit.write_text(text)
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_verify(installed: Path, tmp_path: Path) -> None:
    unit = _unit_for_systemd(installed, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # Unknown or misspelt directives are only warnings: any output is a failure here.
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not re.search(r"Unit \S+\.target not found", line)
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_security_exposure_stays_low(installed: Path, tmp_path: Path) -> None:
    unit = _unit_for_systemd(installed, tmp_path)
    probe = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if "--offline" in probe.stderr and "unrecognized" in probe.stderr:
        pytest.skip("this systemd-analyze has no offline security review")
    # 2.5 or less on systemd's 0-10 scale (10: no hardening at all).
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck absent")
def test_shellcheck_is_clean() -> None:
    result = subprocess.run(
        ["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout

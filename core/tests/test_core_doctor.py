"""``npu-proxy doctor``: a healthy setup passes, every problem fails with a fix, the
doctor never changes the model store it inspects, and the plugins' checks are shown
under their plugin's name (a raising one as that plugin's failure).

The generic checks run in simulated mode with the core's own test plugins (installed as
a throwaway distribution, so the doctor finds them by name as it finds any plugin); the
plugin checks come from inline plugins. The OpenVINO checks are tested with their
plugins.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from core_test_plugins import INSTALLED_NAME, SimBackend, install_as_distribution, tiny_plugins
from npu_proxy import doctor as doctor_module
from npu_proxy.checks import HOST_KEY, Check, DoctorCheck
from npu_proxy.doctor import doctor, read_env_file
from npu_proxy.engine.store import STAGING_PREFIX, ModelStore
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.settings import Settings
from npu_proxy.testing import (
    LiveServer,
    free_port,
    inline_plugin,
    make_app,
    make_host,
    test_settings,
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A healthy setup: an empty writable store, loopback, a free port, simulated mode
    with only the core's test plugins (fast to load)."""
    for name in list(os.environ):
        if name.startswith("NPU_PROXY_"):
            monkeypatch.delenv(name)
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(root))
    monkeypatch.setenv("NPU_PROXY_HOST", "127.0.0.1")
    monkeypatch.setenv("NPU_PROXY_PORT", str(free_port()))
    monkeypatch.syspath_prepend(str(install_as_distribution(tmp_path)))
    monkeypatch.setenv("NPU_PROXY_PLUGINS", INSTALLED_NAME)
    monkeypatch.setenv("NPU_PROXY_REAL_INFERENCE", "0")
    yield root


def run(*args: str, obj: dict[str, Any] | None = None) -> Result:
    return CliRunner().invoke(doctor, list(args), catch_exceptions=False, obj=obj)


def checks(*args: str, obj: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
    result = run("--json", *args, obj=obj)
    report = json.loads(result.output)
    assert report["ok"] == (result.exit_code == 0)
    return result.exit_code, report["checks"]


def statuses(found: list[dict[str, Any]], area: str) -> list[str]:
    return [c["status"] for c in found if c["area"] == area]


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def add_model(root: Path, name: str = "tiny:1b") -> Path:
    weights = root / "weights.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    ModelStore(root).write(ModelInfo(
        name=name, format="gguf", family="llama", capabilities=frozenset({Capability.COMPLETION}),
        context_length=2048, size=64, path=weights,
    ))
    return weights


# --- healthy ---------------------------------------------------------------------------


def test_healthy_setup_exits_zero(store: Path) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    assert "Everything looks fine." in result.output
    for section in ("configuration", "plugins", "devices", "models", "network", "security"):
        assert f"\n{section}\n" in result.output
    assert ("device backends for mock mode (NPU_PROXY_REAL_INFERENCE=0): "
            f"SIM ({INSTALLED_NAME})") in result.output
    assert "no server is running" in result.output


def test_models_are_listed_with_size(store: Path) -> None:
    add_model(store)
    code, found = checks()
    assert code == 0
    models = next(c for c in found if c["area"] == "models")
    assert [m["name"] for m in models["details"]["models"]] == ["tiny:1b"]
    assert models["details"]["size_bytes"] > 64


def test_json_report_shape(store: Path) -> None:
    code, found = checks()
    assert code == 0
    assert {c["status"] for c in found} <= {"ok", "info", "warn", "fail"}
    assert all({"area", "status", "message", "fix", "details", "plugin"} <= set(c)
               for c in found)


# --- the model store ---------------------------------------------------------------


def test_missing_store_fails_with_a_fix(store: Path) -> None:
    store.rmdir()
    result = run()
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert f"fix: mkdir -p '{store}'" in result.output


def test_store_that_is_a_file_fails(store: Path) -> None:
    store.rmdir()
    store.write_text("not a folder")
    code, found = checks()
    assert code == 1 and statuses(found, "models") == ["fail"]


def test_unwritable_store_fails_with_a_fix(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.chmod(0o555)
    if os.geteuid() == 0:
        # root writes anywhere; answer as the kernel answers the service user.
        real_access = os.access
        monkeypatch.setattr(doctor_module.os, "access", lambda path, mode: (
            False if Path(path) == store and mode & os.W_OK else real_access(path, mode)))
    try:
        result = run()
    finally:
        store.chmod(0o755)
    assert result.exit_code == 1
    assert "is not writable" in result.output
    assert "fix: sudo chown -R" in result.output


def test_staging_leftovers_fail_and_are_left_alone(store: Path) -> None:
    leftover = store / f"{STAGING_PREFIX}abc123"
    leftover.mkdir()
    (leftover / "part.gguf").write_bytes(bytes(1000))
    before = snapshot(store)
    result = run()
    assert result.exit_code == 1
    assert f"{STAGING_PREFIX}abc123" in result.output
    assert f"fix: rm -rf '{store}'/{STAGING_PREFIX}*" in result.output
    assert snapshot(store) == before  # the doctor only looks


def test_broken_models_are_reported(store: Path) -> None:
    weights = add_model(store)
    weights.unlink()
    (store / "garbled").mkdir()
    (store / "garbled" / "manifest.json").write_text("{not json")
    code, found = checks()
    assert code == 0
    warnings = [c["message"] for c in found if c["area"] == "models" and c["status"] == "warn"]
    assert any("files that are missing" in w for w in warnings)
    assert any("garbled: unreadable manifest" in w for w in warnings)


# --- the network -------------------------------------------------------------------


@pytest.fixture
def server(store: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """A real npu-proxy (a simulated device) on the port the doctor checks."""
    port = int(os.environ["NPU_PROXY_PORT"])
    settings = test_settings(tmp_path / "server", port=port)
    with LiveServer(make_app(settings, [], tiny_plugins(SimBackend())), port=port) as live:
        yield live


def test_running_server_is_recognised(server: LiveServer) -> None:
    code, found = checks()
    assert code == 0
    network = [c for c in found if c["area"] == "network"]
    assert network[-1]["status"] == "ok"
    assert network[-1]["message"].startswith("npu-proxy 0.1.0 is running")


def test_leftovers_during_a_running_server_only_warn(server: LiveServer, store: Path) -> None:
    (store / f"{STAGING_PREFIX}pulling").mkdir()
    code, found = checks()
    assert code == 0
    assert "warn" in statuses(found, "models")


def test_port_held_by_another_program_fails(store: Path) -> None:
    port = int(os.environ["NPU_PROXY_PORT"])
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        result = run()
    assert result.exit_code == 1
    assert "in use by another program" in result.output
    assert "NPU_PROXY_PORT" in result.output


def test_foreign_bind_address_fails(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_HOST", "192.0.2.1")  # TEST-NET-1: never this machine's
    result = run()
    assert result.exit_code == 1
    assert "cannot bind" in result.output and "NPU_PROXY_HOST" in result.output


# --- security ------------------------------------------------------------------------


def test_lan_without_api_key_warns(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_HOST", "0.0.0.0")
    code, found = checks()
    assert code == 0
    security = next(c for c in found if c["area"] == "security")
    assert security["status"] == "warn"
    assert "without an API key" in security["message"]
    assert "NPU_PROXY_API_KEY" in security["fix"]


def test_internet_without_api_key_fails(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_HOST", "0.0.0.0")
    monkeypatch.setenv("NPU_PROXY_ALLOWED_CLIENTS", "*")
    code, found = checks()
    assert code == 1 and statuses(found, "security") == ["fail"]


def test_api_key_state(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_HOST", "0.0.0.0")
    monkeypatch.setenv("NPU_PROXY_API_KEY", "short")
    code, found = checks()
    assert code == 0 and statuses(found, "security") == ["warn"]
    monkeypatch.setenv("NPU_PROXY_API_KEY", "k" * 43)
    result = run()
    assert result.exit_code == 0
    assert "an API key is required" in result.output
    assert "k" * 43 not in result.output  # never shown


# --- configuration, plugins and backends -------------------------------------------------------


def test_invalid_setting_fails_naming_the_variable(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_PORT", "eleven")
    result = run()
    assert result.exit_code == 1
    assert "NPU_PROXY_PORT" in result.output


def test_missing_named_plugin_fails(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_PLUGINS", f"{INSTALLED_NAME},no-such-plugin")
    code, found = checks()
    assert code == 1 and statuses(found, "plugins") == ["fail"]


def test_real_inference_without_a_backend_fails(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_REAL_INFERENCE", "1")  # the test backend is simulated
    code, found = checks()
    assert code == 1 and statuses(found, "devices") == ["fail"]
    failure = next(c for c in found if c["area"] == "devices")
    assert failure["message"] == "no device backend is loaded for real inference"
    assert "NPU_PROXY_REAL_INFERENCE=0" in failure["fix"]


# --- --env-file ------------------------------------------------------------------------


def test_env_file_is_read_like_systemd(store: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text(
        "# comment\n# NPU_PROXY_PORT=1\nNPU_PROXY_DEVICE=\"GPU\"\nOTHER=x\n"
        f"NPU_PROXY_MODEL_PATH='{tmp_path / 'elsewhere'}'\n"
    )
    assert read_env_file(env) == {"device": "GPU", "model_path": str(tmp_path / "elsewhere")}
    result = run("--env-file", str(env))
    assert result.exit_code == 1  # the store it names does not exist
    assert str(tmp_path / "elsewhere") in result.output


# --- the plugins' checks ---------------------------------------------------------------


def cable_check(settings: Settings) -> list[Check]:
    """A plugin's check: one finding that depends on the settings it is given."""
    if settings.real_inference:
        return [Check("devices", "ok", "the cable is plugged in")]
    return [Check("devices", "warn", "the cable is not needed in mock mode",
                  fix="set NPU_PROXY_REAL_INFERENCE=1 to use it")]


def broken_check(settings: Settings) -> list[Check]:
    raise OSError("the probe fell over")


def host_with(**plugins: Any) -> dict[str, Any]:
    """The click ``obj`` that makes the doctor use the test plugins and ``plugins``."""
    return {HOST_KEY: make_host([INSTALLED_NAME], plugins)}


def checks_plugin(*checks: DoctorCheck) -> Any:
    return inline_plugin(npu_proxy_register_doctor_checks=lambda register: [
        register(check) for check in checks])


def test_a_plugin_check_is_shown_under_its_plugin(store: Path) -> None:
    obj = host_with(cable=checks_plugin(DoctorCheck("cable", "devices", cable_check)))
    code, found = checks(obj=obj)
    assert code == 0
    mine = [c for c in found if c["plugin"] == "cable"]
    assert [(c["area"], c["status"], c["message"]) for c in mine] == [
        ("devices", "warn", "the cable is not needed in mock mode")]
    assert all(c["plugin"] == "" for c in found if c not in mine)
    text = run(obj=obj).output
    assert "\ndevices (plugin cable)\n  WARN  the cable is not needed in mock mode\n" in text
    assert "fix: set NPU_PROXY_REAL_INFERENCE=1 to use it" in text


def test_a_raising_check_fails_its_plugin_and_the_others_still_run(store: Path) -> None:
    obj = host_with(
        flaky=checks_plugin(DoctorCheck("flaky-probe", "devices", broken_check)),
        cable=checks_plugin(DoctorCheck("cable", "devices", cable_check)),
    )
    result = run("--json", obj=obj)
    assert result.exit_code == 1
    found = json.loads(result.output)["checks"]
    failure = next(c for c in found if c["plugin"] == "flaky")
    assert failure["status"] == "fail" and failure["area"] == "devices"
    assert failure["message"] == "the check 'flaky-probe' failed: OSError: the probe fell over"
    assert "'flaky'" in failure["fix"]
    assert any(c["plugin"] == "cable" for c in found)
    assert {"models", "network", "security"} <= {c["area"] for c in found}  # it went on


def test_a_plugin_whose_hook_raises_is_reported_against_it(store: Path) -> None:
    def register_checks(register: Any) -> None:
        raise RuntimeError("no config file")

    obj = host_with(broken=inline_plugin(npu_proxy_register_doctor_checks=register_checks))
    code, found = checks(obj=obj)
    assert code == 1
    failure = next(c for c in found if c["plugin"] == "broken")
    assert failure["area"] == "plugins" and failure["status"] == "fail"
    assert failure["message"] == (
        "plugin 'broken' could not register its checks: RuntimeError: no config file")


def test_two_plugins_registering_one_check_name_fail_naming_both(store: Path) -> None:
    obj = host_with(
        first=checks_plugin(DoctorCheck("cable", "devices", cable_check)),
        second=checks_plugin(DoctorCheck("cable", "devices", cable_check)),
    )
    code, found = checks(obj=obj)
    assert code == 1
    clash = [c["message"] for c in found if c["area"] == "plugins" and c["status"] == "fail"]
    assert clash == ["DoctorCheck 'cable' is registered by both plugin 'first' and plugin "
                     "'second'"]

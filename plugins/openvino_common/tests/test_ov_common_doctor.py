"""``npu-proxy doctor``'s OpenVINO checks: what OpenVINO sees (under the ``openvino``
plugin's name), and the shared per-device checks the device plugins build on.

OpenVINO's answer is replaced by a fixed one where a test needs an NPU or a GPU (this
machine has neither); one test asks the real OpenVINO.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from npu_proxy.cli import main
from npu_proxy.engine.types import DeviceInfo
from npu_proxy.settings import Settings
from npu_proxy.testing import free_port
from npu_proxy_openvino import doctor as ov_doctor
from npu_proxy_openvino.doctor import (
    OpenVINOProbe,
    check_device,
    check_device_files,
    check_openvino,
    device_doctor_checks,
)

CPU = DeviceInfo("CPU", True, full_name="Test CPU")
ALL_DEVICES = OpenVINOProbe(installed=True, version="2025.3.0", devices={
    "CPU": CPU,
    "GPU.0": DeviceInfo("GPU", True, full_name="Intel(R) Arc(TM) Graphics (iGPU)",
                        driver_version="24.35"),
    "NPU": DeviceInfo("NPU", True, full_name="Intel(R) AI Boost", driver_version="1.10.0"),
})
CPU_ONLY = OpenVINOProbe(installed=True, version="2025.3.0", devices={"CPU": CPU})
FIXES = {platform.system(): "install the frobnicator driver"}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Real inference with the ``openvino`` plugin, every device seen, an empty store,
    loopback on a free port."""
    for name in list(os.environ):
        if name.startswith("NPU_PROXY_"):
            monkeypatch.delenv(name)
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(root))
    monkeypatch.setenv("NPU_PROXY_HOST", "127.0.0.1")
    monkeypatch.setenv("NPU_PROXY_PORT", str(free_port()))
    monkeypatch.setenv("NPU_PROXY_PLUGINS", "openvino")
    monkeypatch.setattr(ov_doctor, "probe_openvino", lambda: ALL_DEVICES)
    yield root


def openvino_findings() -> list[dict[str, Any]]:
    """The doctor's findings (``--json``) that the ``openvino`` plugin contributed."""
    result = CliRunner().invoke(main, ["doctor", "--json"], catch_exceptions=False)
    return [c for c in json.loads(result.output)["checks"] if c["plugin"] == "openvino"]


def settings(**values: Any) -> Settings:
    return Settings(**{"real_inference": True, "device": "NPU", **values})


def test_every_device_seen_is_listed_with_its_driver(setup: Path) -> None:
    result = CliRunner().invoke(main, ["doctor"], catch_exceptions=False)
    assert "\ndevices (plugin openvino)\n  ok    OpenVINO 2025.3.0 sees CPU: Test CPU; " \
        in result.output
    assert "NPU: Intel(R) AI Boost (driver 1.10.0)" in result.output
    seen, suggestion = openvino_findings()
    assert seen["status"] == "ok" and seen["area"] == "devices"
    assert seen["details"]["devices"]["GPU.0"]["driver_version"] == "24.35"
    assert suggestion["status"] == "info"
    assert suggestion["message"].endswith("run: npu-proxy bench --device all")


def test_bench_is_suggested_only_when_an_npu_or_gpu_is_seen() -> None:
    npu_only = OpenVINOProbe(installed=True, version="2025.3.0", devices={
        "CPU": CPU, "NPU": DeviceInfo("NPU", True, full_name="Intel(R) AI Boost")})
    _, suggestion = check_openvino(settings(), npu_only)
    assert suggestion.message == ("to measure the NPU beside the CPU on this machine "
                                  "(tokens/s, first token, compile time), run: "
                                  "npu-proxy bench --device all")
    _, both = check_openvino(settings(), ALL_DEVICES)
    assert "to measure the NPU and the GPU beside the CPU" in both.message
    assert [c.status for c in check_openvino(settings(), CPU_ONLY)] == ["ok"]


def test_openvino_absent_fails_only_for_real_inference(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ov_doctor, "probe_openvino", lambda: OpenVINOProbe(installed=False))
    [absent] = openvino_findings()
    assert absent["status"] == "fail"
    assert absent["message"] == "OpenVINO is not installed: real inference cannot run"
    assert "pip install npu-proxy-openvino-cpu" in absent["fix"]
    monkeypatch.setenv("NPU_PROXY_REAL_INFERENCE", "0")
    [absent] = openvino_findings()
    assert absent["status"] == "info"


def test_a_broken_driver_fails(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = OpenVINOProbe(installed=True, version="2025.3.0", error="clGetPlatformIDs -1001")
    monkeypatch.setattr(ov_doctor, "probe_openvino", lambda: broken)
    [failure] = openvino_findings()
    assert failure["status"] == "fail"
    assert failure["message"] == "OpenVINO 2025.3.0 could not list devices: clGetPlatformIDs -1001"


def test_the_real_openvino_sees_the_cpu(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.undo()  # back to the real probe
    monkeypatch.setenv("NPU_PROXY_PLUGINS", "openvino")
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(setup))
    [seen] = openvino_findings()
    assert seen["status"] == "ok" and "sees CPU" in seen["message"], seen


def test_an_absent_wanted_device_warns_with_the_given_advice() -> None:
    [warning] = check_device(settings(), CPU_ONLY, "NPU", FIXES)
    assert warning.status == "warn"
    assert warning.message == ("NPU (NPU_PROXY_DEVICE) is not available: requests go to the "
                               "fallback device")
    assert warning.fix == ("install the frobnicator driver; or set NPU_PROXY_DEVICE to one "
                           "of: CPU")
    [info] = check_device(settings(real_inference=False), CPU_ONLY, "NPU", FIXES)
    assert info.status == "info"
    [unknown] = check_device(settings(embedding_device="GPU"), CPU_ONLY, "GPU", {})
    assert unknown.message.startswith("GPU (NPU_PROXY_EMBEDDING_DEVICE) is not available")
    assert unknown.fix.startswith("check that GPU is a device OpenVINO knows; or set")


def test_a_seen_or_unwanted_device_says_nothing() -> None:
    assert check_device(settings(device="GPU"), ALL_DEVICES, "GPU", FIXES) == []  # GPU.0
    assert check_device(settings(device="CPU"), CPU_ONLY, "NPU", FIXES) == []
    assert check_device(settings(), OpenVINOProbe(installed=False), "NPU", FIXES) == []


@pytest.mark.skipif(platform.system() != "Linux", reason="device files are a Linux matter")
def test_device_files_this_user_may_not_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "accel").mkdir()
    node = tmp_path / "accel" / "accel0"
    node.write_bytes(b"")
    [ok] = check_device_files(settings(), "NPU", "accel/accel*", root=tmp_path)
    assert ok.status == "ok" and ok.message == f"NPU device files are accessible: {node}"
    real_access = os.access
    monkeypatch.setattr(ov_doctor.os, "access", lambda path, mode: (
        False if Path(path) == node else real_access(path, mode)))
    [blocked] = check_device_files(settings(), "NPU", "accel/accel*", root=tmp_path)
    assert blocked.status == "fail"  # the preferred device
    assert blocked.message == f"NPU device files exist but this user may not open them: {node}"
    assert blocked.fix.startswith("sudo usermod -aG render ")
    [warning] = check_device_files(settings(device="GPU"), "NPU", "accel/accel*", root=tmp_path)
    assert warning.status == "warn"
    assert check_device_files(settings(), "NPU", "nothing/here*", root=tmp_path) == []
    assert check_device_files(settings(real_inference=False), "NPU", "accel/accel*",
                              root=tmp_path) == []


def test_a_device_plugins_checks_run_against_the_shared_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ov_doctor, "probe_openvino", lambda: CPU_ONLY)
    seen, files = device_doctor_checks("NPU", FIXES, files="accel/accel*")
    assert (seen.name, seen.area) == ("openvino-npu-device", "devices")
    assert files.name == "openvino-npu-device-files"
    [warning] = seen.run(settings())
    assert warning.fix.startswith("install the frobnicator driver")

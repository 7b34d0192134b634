"""``npu-proxy doctor`` with the NPU plugin: a wanted NPU that OpenVINO does not see gets
the NPU driver advice, under the plugin's name (this machine has no NPU, so OpenVINO's
answer is a fixed one)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from npu_proxy.cli import main
from npu_proxy.engine.types import DeviceInfo
from npu_proxy.testing import free_port
from npu_proxy_openvino import doctor as ov_doctor
from npu_proxy_openvino.doctor import OpenVINOProbe
from npu_proxy_openvino_npu.doctor import NPU_DRIVER_FIX, doctor_checks

CPU_ONLY = OpenVINOProbe(installed=True, version="2025.3.0",
                         devices={"CPU": DeviceInfo("CPU", True, full_name="Test CPU")})


def doctor_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The doctor's findings with the OpenVINO and NPU plugins, real inference, the NPU
    wanted (NPU_PROXY_DEVICE) and absent."""
    for name in list(os.environ):
        if name.startswith("NPU_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("NPU_PROXY_HOST", "127.0.0.1")
    monkeypatch.setenv("NPU_PROXY_PORT", str(free_port()))
    monkeypatch.setenv("NPU_PROXY_PLUGINS", "openvino,openvino-npu")
    monkeypatch.setenv("NPU_PROXY_DEVICE", "NPU")
    monkeypatch.setattr(ov_doctor, "probe_openvino", lambda: CPU_ONLY)
    result = CliRunner().invoke(main, ["doctor", "--json"], catch_exceptions=False)
    checks: list[dict[str, Any]] = json.loads(result.output)["checks"]
    return checks


def test_an_absent_npu_driver_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = doctor_json(tmp_path, monkeypatch)
    [warning] = [c for c in found if c["plugin"] == "openvino-npu"]
    assert (warning["area"], warning["status"]) == ("devices", "warn")
    assert warning["message"] == (
        "NPU (NPU_PROXY_DEVICE) is not available: requests go to the fallback device")
    assert warning["fix"].endswith("; or set NPU_PROXY_DEVICE to one of: CPU")
    if platform.system() == "Linux":
        assert "sudo modprobe intel_vpu" in warning["fix"]
    # The device's backend is loaded: the core has nothing to add about the NPU.
    core = [c["message"] for c in found if c["plugin"] == "" and c["area"] == "devices"]
    assert not any("drives NPU" in message for message in core)


def test_the_npu_checks_are_named_for_the_npu() -> None:
    assert [c.name for c in doctor_checks()] == [
        "openvino-npu-device", "openvino-npu-device-files"]
    assert set(NPU_DRIVER_FIX) == {"Linux", "Windows"}

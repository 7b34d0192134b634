"""``npu-proxy doctor``'s OpenVINO checks: what OpenVINO sees, and per device whether it
is there and (on Linux) whether this user may open its device files.

The shared parts live here; each device plugin supplies what only it knows (the driver
advice for its device and the name of its device files) through
:func:`device_doctor_checks`. This plugin registers the check of OpenVINO itself
(:func:`doctor_checks`).

Nothing here imports OpenVINO at module level: ``npu-proxy serve`` imports this module
with the plugin and must not pay for it. OpenVINO is asked once per process
(:func:`probe_openvino`): enumerating devices loads their drivers, and every device
plugin's check needs the answer.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npu_proxy.checks import Check, DoctorCheck, current_user
from npu_proxy.engine.types import DeviceInfo
from npu_proxy.settings import Settings

AREA = "devices"


@dataclass(frozen=True)
class OpenVINOProbe:
    """OpenVINO's version and devices (OpenVINO's own names: ``CPU``, ``GPU.0``, ``NPU``).

    ``installed`` is False when ``openvino`` cannot be imported; ``error`` is set when it
    imports but cannot list devices (a broken driver).
    """

    installed: bool
    version: str = ""
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    error: str = ""

    def sees(self, device: str) -> bool:
        """Whether OpenVINO lists ``device`` (``GPU`` is seen as ``GPU.0`` too)."""
        from .devices import matching_devices

        return bool(matching_devices(list(self.devices), device))


@functools.cache
def probe_openvino() -> OpenVINOProbe:
    """Ask OpenVINO once per process which devices it sees; never raises."""
    try:
        import openvino
    except ImportError:
        return OpenVINOProbe(installed=False)
    from .devices import describe_device

    # "2025.3.0-19807-44526285f24-releases/2025/3" -> "2025.3.0"
    version = str(getattr(openvino, "__version__", "") or openvino.get_version()).split("-")[0]
    try:
        core = openvino.Core()
        names = list(core.available_devices)
    except Exception as exc:  # a broken driver is a finding, not a crash
        return OpenVINOProbe(installed=True, version=version, error=str(exc))
    devices = {name: describe_device(core, name) for name in names}
    return OpenVINOProbe(installed=True, version=version, devices=devices)


def check_openvino(settings: Settings, probe: OpenVINOProbe) -> list[Check]:
    """OpenVINO is importable and lists devices; which ones, with their drivers. With
    an NPU or a GPU, a pointer to ``npu-proxy bench --device all`` to measure them."""
    real = settings.real_inference
    if not probe.installed:
        if not real:
            return [Check(AREA, "info", "OpenVINO is not installed (mock mode needs none)")]
        return [Check(AREA, "fail", "OpenVINO is not installed: real inference cannot run",
                      fix="install the OpenVINO backends (pip install npu-proxy-openvino-cpu "
                          "npu-proxy-openvino-gpu npu-proxy-openvino-npu) or set "
                          "NPU_PROXY_REAL_INFERENCE=0 for the mock backend")]
    if probe.error:
        return [Check(AREA, "fail" if real else "warn",
                      f"OpenVINO {probe.version} could not list devices: {probe.error}",
                      fix="reinstall the device drivers, then run 'npu-proxy devices'")]
    if not probe.devices:
        return [Check(AREA, "fail" if real else "warn",
                      f"OpenVINO {probe.version} sees no device",
                      fix="reinstall openvino; even a CPU should always be listed")]
    seen = "; ".join(
        f"{name}: {info.full_name or name}"
        + (f" (driver {info.driver_version})" if info.driver_version else "")
        for name, info in probe.devices.items()
    )
    details = {"openvino": probe.version,
               "devices": {name: asdict(info) for name, info in probe.devices.items()}}
    checks = [Check(AREA, "ok", f"OpenVINO {probe.version} sees {seen}", details=details)]
    accelerators = [d for d in ("NPU", "GPU") if probe.sees(d)]
    if accelerators:
        checks.append(Check(
            AREA, "info", f"to measure the {' and the '.join(accelerators)} beside the CPU "
            "on this machine (tokens/s, first token, compile time), run: "
            "npu-proxy bench --device all"))
    return checks


def check_device(
    settings: Settings, probe: OpenVINOProbe, device: str, fixes: Mapping[str, str]
) -> list[Check]:
    """When the settings ask for ``device`` and OpenVINO does not see it: a warning (real
    inference) with ``fixes[platform.system()]``, the advice for this system."""
    if not probe.installed or probe.error or not probe.devices:
        return []  # check_openvino has said why no device is seen
    wanted = {settings.device: "NPU_PROXY_DEVICE",
              settings.embedding_device: "NPU_PROXY_EMBEDDING_DEVICE"}
    checks = []
    for name, variable in wanted.items():
        if name != device or probe.sees(device):
            continue
        fix = fixes.get(platform.system(), f"check that {device} is a device OpenVINO knows")
        checks.append(Check(
            AREA, "warn" if settings.real_inference else "info",
            f"{device} ({variable}) is not available: requests go to the fallback device",
            fix=f"{fix}; or set {variable} to one of: {', '.join(probe.devices)}",
        ))
    return checks


def check_device_files(
    settings: Settings, device: str, pattern: str, root: Path = Path("/dev")
) -> list[Check]:
    """Linux: ``device``'s files (``root/<pattern>``) exist and this user may open them.

    Nothing is said when there are none (no such hardware) or for the mock backend.
    """
    if platform.system() != "Linux" or not settings.real_inference:
        return []
    nodes = sorted(root.glob(pattern))
    if not nodes:
        return []
    blocked = [str(n) for n in nodes if not os.access(n, os.R_OK | os.W_OK)]
    if not blocked:
        return [Check(AREA, "ok", f"{device} device files are accessible: "
                      + ", ".join(str(n) for n in nodes))]
    return [Check(
        AREA, "fail" if device == settings.device else "warn",
        f"{device} device files exist but this user may not open them: " + ", ".join(blocked),
        fix=f"sudo usermod -aG render {current_user()} (then log in again); the systemd "
            "service user gets the render group from install_linux.sh",
    )]


def device_doctor_checks(
    device: str, fixes: Mapping[str, str], files: str
) -> list[DoctorCheck]:
    """A device plugin's two checks: ``device`` is seen when wanted (``fixes`` by
    ``platform.system()``), and its device files (``/dev/<files>``) may be opened."""
    key = device.lower()

    def seen(settings: Settings) -> list[Check]:
        return check_device(settings, probe_openvino(), device, fixes)

    return [
        DoctorCheck(f"openvino-{key}-device", AREA, seen),
        DoctorCheck(f"openvino-{key}-device-files", AREA,
                    lambda settings: check_device_files(settings, device, files)),
    ]


def doctor_checks() -> list[DoctorCheck]:
    """This plugin's check: OpenVINO itself (the device plugins add theirs)."""
    return [DoctorCheck("openvino", AREA,
                        lambda settings: check_openvino(settings, probe_openvino()))]

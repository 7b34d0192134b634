"""The facts of this machine that change benchmark results.

The CPU model and the devices with their drivers come from OpenVINO (the doctor's
probe, asked once per process); whether the machine runs on battery comes from the
operating system where it says so (Linux ``/sys/class/power_supply``, Windows
``GetSystemPowerStatus``), and is ``None`` elsewhere rather than guessed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from ..doctor import probe_openvino


def machine_facts() -> dict[str, Any]:
    """CPU, OS, OpenVINO and its devices (names, drivers), power source, load (blocking)."""
    probe = probe_openvino()
    cpu = probe.devices.get("CPU")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": (cpu.full_name if cpu and cpu.full_name else platform.processor()) or None,
        "logical_cpus": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "openvino": probe.version or None,
        "openvino_genai": _version("openvino-genai"),
        "npu_proxy": _version("npu-proxy"),
        "devices": {
            name: {"name": info.full_name, "driver": info.driver_version or None}
            for name, info in probe.devices.items()
        },
        "on_battery": on_battery(),
        "load_average": round(load, 2) if load is not None else None,
    }


def summary_line(facts: dict[str, Any]) -> str:
    """One line for the top of a table."""
    devices = ", ".join(
        # the CPU's "driver" is OpenVINO's own plugin build: in the JSON, not in the line
        f"{name} {info['name']}"
        + (f" (driver {info['driver']})" if info["driver"] and name != "CPU" else "")
        for name, info in facts["devices"].items()
    ) or "none"
    power = {True: "on battery", False: "on mains", None: "power source unknown"}
    return (f"{facts['cpu'] or 'unknown CPU'}, {facts['logical_cpus']} logical CPUs; "
            f"OpenVINO {facts['openvino'] or 'not installed'}; devices: {devices}; "
            f"{power[facts['on_battery']]}; load average {facts['load_average']}")


def on_battery(power_supply: Path = Path("/sys/class/power_supply")) -> bool | None:
    """True on battery, False on mains, None where the OS does not say."""
    if sys.platform == "win32":
        return _windows_on_battery()
    if not power_supply.is_dir():
        return None
    mains: list[bool] = []
    discharging = False
    for supply in power_supply.iterdir():
        kind = _read(supply / "type")
        if kind == "Mains":
            mains.append(_read(supply / "online") == "1")
        elif kind == "Battery" and _read(supply / "status") == "Discharging":
            discharging = True
    if any(mains):
        return False
    if mains or discharging:
        return True
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _windows_on_battery() -> bool | None:
    import ctypes
    from ctypes import wintypes

    class PowerStatus(ctypes.Structure):
        _fields_ = [("ACLineStatus", wintypes.BYTE), ("BatteryFlag", wintypes.BYTE),
                    ("BatteryLifePercent", wintypes.BYTE), ("Reserved1", wintypes.BYTE),
                    ("BatteryLifeTime", wintypes.DWORD), ("BatteryFullLifeTime", wintypes.DWORD)]

    status = PowerStatus()
    if not ctypes.windll.kernel32.GetSystemPowerStatus(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    line = status.ACLineStatus & 0xFF
    return {0: True, 1: False}.get(line)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None

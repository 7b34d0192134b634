"""Device discovery through ``openvino.Core``.

Blocking (the first ``Core()`` loads device plugins): call :func:`describe_device` from
a worker thread. It never raises: an absent device or a broken driver becomes a
``DeviceInfo(present=False, error=...)`` that names the device and what OpenVINO sees.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from npu_proxy.engine.types import DeviceInfo

log = logging.getLogger(__name__)

# Properties worth showing per device, if the device lists them as supported.
_DRIVER_KEYS = ("NPU_DRIVER_VERSION", "GPU_DRIVER_VERSION", "DRIVER_VERSION")
_MEMORY_KEYS = ("GPU_DEVICE_TOTAL_MEM_SIZE", "NPU_DEVICE_TOTAL_MEM_SIZE")
_EXTRA_KEYS = (
    "DEVICE_ARCHITECTURE",
    "DEVICE_TYPE",
    "OPTIMIZATION_CAPABILITIES",
    "RANGE_FOR_ASYNC_INFER_REQUESTS",
    "NPU_COMPILER_VERSION",
    "GPU_EXECUTION_UNITS_COUNT",
)


def matching_devices(available: list[str], device: str) -> list[str]:
    """OpenVINO device names that are ``device`` (``GPU`` matches ``GPU.0``, ``GPU.1``)."""
    return [name for name in available if name == device or name.startswith(device + ".")]


def describe_device(core: Any, device: str) -> DeviceInfo:
    """What ``core`` (an ``openvino.Core``) reports about ``device``."""
    try:
        available = list(core.available_devices)
    except Exception as exc:  # a broken driver must not take the server down
        log.warning("OpenVINO device enumeration failed: %s", exc)
        return DeviceInfo(device=device, present=False,
                          error=f"{device} not found; OpenVINO could not list devices")
    names = matching_devices(available, device)
    if not names:
        seen = ", ".join(available) or "no devices"
        return DeviceInfo(device=device, present=False,
                          error=f"{device} not found; OpenVINO sees: {seen}")
    name = names[0]
    supported = set(_get(core, name, "SUPPORTED_PROPERTIES") or ())
    full_name = str(_get(core, name, "FULL_DEVICE_NAME") or name)
    driver = ""
    for key in _DRIVER_KEYS:
        if key in supported and (value := _get(core, name, key)):
            driver = str(value)
            break
    if not driver:
        driver = _plugin_version(core, name)
    memory: int | None = None
    for key in _MEMORY_KEYS:
        if key in supported and (value := _get(core, name, key)):
            memory = int(value)
            break
    if memory is None and device == "CPU":
        memory = _system_memory()
    properties: dict[str, Any] = {"openvino_devices": names}
    for key in _EXTRA_KEYS:
        if key in supported and (value := _get(core, name, key)) is not None:
            properties[key.lower()] = _plain(value)
    return DeviceInfo(device=device, present=True, full_name=full_name,
                      driver_version=driver, memory_bytes=memory, properties=properties)


def available_devices(core: Any) -> list[str]:
    """Every device OpenVINO sees, or an empty list if enumeration fails."""
    try:
        return list(core.available_devices)
    except Exception:
        return []


def _get(core: Any, device: str, key: str) -> Any:
    try:
        return core.get_property(device, key)
    except Exception:
        return None


def _plugin_version(core: Any, device: str) -> str:
    try:
        version = core.get_versions(device)[device]
    except Exception:
        return ""
    return f"{version.description} {version.build_number}".strip()


def _system_memory() -> int | None:
    # The CPU plugin reports no memory size; the host's RAM is what it can use.
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)

"""Entry point ``openvino-npu`` (group ``npu_proxy.backends``)."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.checks import DoctorCheck
from npu_proxy.engine.backend import Backend
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings, load_plugin_settings

from .backend import NpuBackend, NpuSettings


@hookimpl
def npu_proxy_register_backends(register: Callable[[Backend], None], settings: Settings) -> None:
    """Register the NPU backend (an absent NPU is reported by its probe, not here).

    Reads :class:`NpuSettings`: an invalid ``NPU_PROXY_MAX_PROMPT_LEN`` stops startup.
    """
    register(NpuBackend(settings, npu_settings=load_plugin_settings(NpuSettings)))


@hookimpl
def npu_proxy_register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Register the NPU checks of ``npu-proxy doctor`` (driver advice, device files)."""
    from .doctor import doctor_checks

    for check in doctor_checks():
        register(check)

"""Entry point ``openvino-gpu`` (group ``npu_proxy.backends``)."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.checks import DoctorCheck
from npu_proxy.engine.backend import Backend
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings

from .backend import GpuBackend


@hookimpl
def npu_proxy_register_backends(register: Callable[[Backend], None], settings: Settings) -> None:
    """Register the GPU backend (an absent GPU is reported by its probe, not here)."""
    register(GpuBackend(settings))


@hookimpl
def npu_proxy_register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Register the GPU checks of ``npu-proxy doctor`` (driver advice, device files)."""
    from .doctor import doctor_checks

    for check in doctor_checks():
        register(check)

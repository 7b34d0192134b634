"""Entry point ``openvino`` (group ``npu_proxy.backends``): model formats and the embedded models.

The device backends live in their own plugins (``openvino-cpu``, ``openvino-gpu``,
``openvino-npu``); this one registers the model formats they all read (GGUF, OpenVINO
IR, ONNX embeddings: :mod:`.formats`) and the models every one of them can serve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from npu_proxy.checks import DoctorCheck
from npu_proxy.engine.types import ModelInfo
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings

# The formats' hook lives with the formats; imported here, it is this plugin's hook too.
from .formats import npu_proxy_register_model_formats  # noqa: F401
from .models import embedded_models

if TYPE_CHECKING:
    import click


@hookimpl
def npu_proxy_register_models(register: Callable[[ModelInfo], None], settings: Settings) -> None:
    """Register ``smollm2:135m`` and ``all-minilm:latest`` when their packages are installed.

    Reads file headers and a cached digest only (milliseconds after the first start).
    """
    for model in embedded_models(settings.model_path):
        register(model)


@hookimpl
def npu_proxy_register_commands(register: Callable[[click.Command], None]) -> None:
    """Register ``npu-proxy bench`` (its modules load only when it runs)."""
    from .bench.cli import bench

    register(bench)


@hookimpl
def npu_proxy_register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """Register ``npu-proxy doctor``'s check of OpenVINO (its version and devices)."""
    from .doctor import doctor_checks

    for check in doctor_checks():
        register(check)

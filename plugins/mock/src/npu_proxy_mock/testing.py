"""Test helpers built on the mock: apps whose only devices are the simulated ones a test makes.

``single_device_app(tmp_path, MockBackend("NPU", max_prompt_len=64), ["openai"])`` gives
a server whose one device is that backend, serving the mock models, in mock mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from npu_proxy.testing import backend_plugin, inline_plugin, make_app, test_settings

from .backend import MockBackend, mock_models


def _register_models(register: Callable[[Any], None]) -> None:
    for model in mock_models():
        register(model)


def models_plugin() -> Any:
    """An inline plugin that registers the mock models (``mock``, ``mock-embed``)."""
    return inline_plugin(npu_proxy_register_models=_register_models)


def devices_app(
    tmp_path: Path,
    backends: Sequence[MockBackend],
    plugins: Sequence[str] = (),
    **settings: Any,
) -> Any:
    """An app whose devices are exactly ``backends`` (the first is the preferred one).

    ``plugins`` names the installed plugins to load besides (dialects, typically);
    ``settings`` override :func:`npu_proxy.testing.test_settings`.
    """
    settings.setdefault("device", backends[0].device)
    inline = {"test-devices": backend_plugin(*backends), "test-models": models_plugin()}
    return make_app(test_settings(tmp_path, **settings), list(plugins), inline)


def single_device_app(
    tmp_path: Path, backend: MockBackend, plugins: Sequence[str] = (), **settings: Any
) -> Any:
    """An app whose one device is ``backend``."""
    return devices_app(tmp_path, [backend], plugins, **settings)

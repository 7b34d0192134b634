"""A front npu-proxy (mock CPU device, OpenAI dialect, this plugin) and fake remote engines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.types import ModelInfo
from npu_proxy.testing import (
    LiveServer,
    backend_plugin,
    inline_plugin,
    make_app,
    test_settings,
)
from npu_proxy_mock.backend import MockBackend
from npu_proxy_upstream.testing import FakeEngine, probed, wait_until

Front = Callable[..., contextlib.AbstractContextManager[LiveServer]]


@pytest.fixture
def fake() -> Iterator[tuple[FakeEngine, LiveServer]]:
    """A fake remote engine serving ``fake-chat`` and ``fake-embed``."""
    engine = FakeEngine()
    with LiveServer(engine.app()) as live:
        yield engine, live


@pytest.fixture
def front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Front:
    """``front(toml, local=None, models=(), dialects=("openai",), **settings)``: a front
    server speaking ``dialects`` whose upstreams are the ``[upstreams.NAME]`` tables in
    ``toml``, with ``local`` as its CPU device serving ``models``, probing an upstream
    that is down every 0.2 s; ready once its first probes answered."""

    @contextlib.contextmanager
    def start(toml: str, local: MockBackend | None = None,
              models: tuple[ModelInfo, ...] = (), dialects: tuple[str, ...] = ("openai",),
              **settings: Any) -> Iterator[LiveServer]:
        path = tmp_path / "upstreams.toml"
        path.write_text(toml, "utf-8")
        monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(path))
        monkeypatch.setenv("NPU_PROXY_UPSTREAM_PROBE", "0.2")
        inline: dict[str, Any] = {}
        if local is not None:
            inline["devices"] = backend_plugin(local)
        if models:
            inline["models"] = inline_plugin(
                npu_proxy_register_models=lambda register: [register(m) for m in models])
        app = make_app(test_settings(tmp_path, device="CPU", **settings),
                       [*dialects, "upstream"], inline)
        with LiveServer(app) as server:
            wait_until(lambda: probed(server.url))
            yield server

    return start

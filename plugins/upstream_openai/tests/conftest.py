"""A front npu-proxy (mock CPU device, OpenAI dialect, this plugin) and fake remote engines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.testing import LiveServer, backend_plugin, make_app, test_settings
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
    """``front(toml, local=None, **settings)``: a front server whose upstreams are the
    ``[upstreams.NAME]`` tables in ``toml``, with ``local`` as its CPU device, probing an
    upstream that is down every 0.2 s; ready once its first probes answered."""

    @contextlib.contextmanager
    def start(toml: str, local: MockBackend | None = None,
              **settings: Any) -> Iterator[LiveServer]:
        path = tmp_path / "upstreams.toml"
        path.write_text(toml, "utf-8")
        monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(path))
        monkeypatch.setenv("NPU_PROXY_UPSTREAM_PROBE", "0.2")
        inline = {"devices": backend_plugin(local)} if local is not None else {}
        app = make_app(test_settings(tmp_path, device="CPU", **settings),
                       ["openai", "upstream"], inline)
        with LiveServer(app) as server:
            wait_until(lambda: probed(server.url))
            yield server

    return start

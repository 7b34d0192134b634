"""A real server with the real CPU backend and every dialect, shared by the e2e tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, make_app


@pytest.fixture(scope="session")
def real_server(ov_settings: Settings) -> Iterator[LiveServer]:
    """Every installed plugin, real inference; NPU and GPU are absent here, so CPU serves."""
    with LiveServer(make_app(ov_settings)) as server:
        yield server

"""Every installed plugin composed into one app: the schema builds and every route is guarded.

The core's own suite checks the same with its test plugins only; these run over all the
dialects and sinks installed in the workspace.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from npu_proxy.testing import LiveServer, assert_routes_need_key, make_app, test_settings

KEY = "sk-test-sentinel-composition-0123"


def test_the_openapi_schema_of_every_plugin_builds_without_warnings(tmp_path: Path) -> None:
    app = make_app(test_settings(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = app.openapi()
    assert "/api/chat" in schema["paths"] and "/v1/messages" in schema["paths"]


def test_every_route_of_every_plugin_but_health_needs_the_key(tmp_path: Path) -> None:
    with LiveServer(make_app(test_settings(tmp_path, api_key=KEY))) as server:
        routes = assert_routes_need_key(server, KEY)
    assert ("POST", "/api/chat") in routes and ("POST", "/v1/chat/completions") in routes
    assert ("GET", "/metrics") in routes

"""Every hook is exercised here, and documented with its exact signature."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_test_plugins import SimBackend, models_plugin
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from npu_proxy import hookspecs
from npu_proxy.api import ApiDialect
from npu_proxy.engine.events import MetricsSink, RequestCompleted
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.testing import LiveServer, backend_plugin, inline_plugin, make_app, test_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugin_hooks.md"
HOOKS = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("npu_proxy_")
)


def signature(name: str) -> str:
    sig = str(inspect.signature(getattr(hookspecs, name)))
    return name + sig.replace("'", "")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_doc_heading_with_its_signature(hook: str) -> None:
    headings = re.findall(r"^## (.+)$", DOCS.read_text(), re.MULTILINE)
    assert signature(hook) in headings


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    tests = {name for name, _ in inspect.getmembers(inspect.getmodule(test_hook_startup))}
    assert f"test_hook_{hook.removeprefix('npu_proxy_')}" in tests


class Echo(ApiDialect):
    name = "echo"
    prefixes = ("/echo",)

    def router(self, ctx: Any) -> APIRouter:
        router = APIRouter()

        @router.get("/echo")
        async def echo() -> PlainTextResponse:
            return PlainTextResponse(f"{len(ctx.store.models())} models")

        return router

    def error_response(self, status: int, message: str, *, code: str = "",
                       headers: dict[str, str] | None = None) -> PlainTextResponse:
        return PlainTextResponse(f"echo error: {message}", status_code=status, headers=headers)


def test_hook_register_api(tmp_path: Path) -> None:
    plugin = inline_plugin(npu_proxy_register_api=lambda register: register(Echo()))
    inline = {"echo": plugin, "models": models_plugin()}
    with LiveServer(make_app(test_settings(tmp_path), [], inline)) as server:
        assert httpx.get(server.url + "/echo").text == "2 models"
        missing = httpx.get(server.url + "/echo/missing")
        assert (missing.status_code, missing.text) == (404, "echo error: /echo/missing not found")


def test_hook_register_backends(tmp_path: Path) -> None:
    npu = SimBackend("NPU")
    app = make_app(test_settings(tmp_path), [], {"npu": backend_plugin(npu)})
    assert app.state.ctx.engine.backends["NPU"] is npu


def test_hook_register_models(tmp_path: Path) -> None:
    info = ModelInfo(name="tiny", format="mock", family="t", context_length=64,
                     capabilities=frozenset({Capability.COMPLETION}))
    plugin = inline_plugin(npu_proxy_register_models=lambda register: register(info))
    app = make_app(test_settings(tmp_path), [], {"models": plugin})
    resolved = app.state.ctx.store.resolve("tiny")
    assert resolved.name == "tiny:latest" and resolved.builtin


def test_hook_register_routing_policies(tmp_path: Path) -> None:
    from npu_proxy.engine.routing import RouteDecision, RoutingPolicy

    class First(RoutingPolicy):
        name = "first"

        def choose(self, ctx: Any) -> RouteDecision:
            return RouteDecision(next(iter(ctx.devices)), "first")

    plugin = inline_plugin(npu_proxy_register_routing_policies=lambda register: register(First()))
    app = make_app(test_settings(tmp_path, routing="first"), [], {"first": plugin})
    assert app.state.ctx.engine.policy.name == "first"


class Recorder(MetricsSink):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.events: list[Any] = []

    def handle(self, event: Any) -> None:
        if self.fail:
            raise RuntimeError("sink is broken")
        self.events.append(event)


def test_hook_register_metrics_sinks(tmp_path: Path) -> None:
    broken, good = Recorder("broken", fail=True), Recorder("good")

    def register(register: Any) -> None:
        register(broken)
        register(good)

    plugin = inline_plugin(npu_proxy_register_metrics_sinks=register)
    with LiveServer(make_app(test_settings(tmp_path), [], {"sinks": plugin})) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200
        assert server.ctx.bus.failures["broken"] >= 2
    completed = [e for e in good.events if isinstance(e, RequestCompleted)]
    assert [(e.endpoint, e.status) for e in completed] == [("/health", 200)] * 2


def test_hook_startup(tmp_path: Path) -> None:
    seen: list[str] = []

    async def started(ctx: Any) -> None:
        await asyncio.sleep(0)
        seen.append(f"started {ctx.engine.policy.name}")

    def broken(ctx: Any) -> None:
        raise RuntimeError("startup hook failed")

    plugins = {"a": inline_plugin(npu_proxy_startup=started),
               "b": inline_plugin(npu_proxy_startup=broken)}
    with LiveServer(make_app(test_settings(tmp_path), [], plugins)) as server:
        assert httpx.get(server.url + "/health").status_code == 200  # still serving
        assert seen == ["started token_threshold"]


def test_hook_shutdown(tmp_path: Path) -> None:
    seen: list[bool] = []

    async def stopped(ctx: Any) -> None:
        seen.append(ctx.engine.probing is False)

    plugin = inline_plugin(npu_proxy_shutdown=stopped)
    with LiveServer(make_app(test_settings(tmp_path), [], {"s": plugin})):
        assert seen == []
    assert seen == [True]

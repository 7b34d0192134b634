"""Every hook is exercised here, and documented with its exact signature."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_test_plugins import SimBackend, models_plugin
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from npu_proxy import hookspecs
from npu_proxy.api import ApiDialect
from npu_proxy.engine.errors import EngineError
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

    def error_response(self, error: EngineError) -> PlainTextResponse:
        return PlainTextResponse(f"echo error: {error.message}", status_code=error.status,
                                 headers=error.headers)


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


def test_hook_register_model_formats(tmp_path: Path) -> None:
    from npu_proxy.app import StartupError
    from npu_proxy.engine.formats import ModelFormat

    class Text(ModelFormat):
        """``.txt`` files are models; no repository holds one."""

        name = "text"

        def select(self, request: Any, listing: Any, peek: Any) -> None:
            return None

        def describe(self, path: Path, name: str) -> ModelInfo | None:
            if path.suffix != ".txt":
                return None
            return ModelInfo(name, "text", path.read_text(), frozenset(), 128, path=path)

    plugin = inline_plugin(npu_proxy_register_model_formats=lambda register: register(Text()))
    app = make_app(test_settings(tmp_path), [], {"formats": plugin})
    store = app.state.ctx.store
    assert store.formats.names() == ["text"]
    (tmp_path / "m.txt").write_text("llama")
    assert store.import_path(tmp_path / "m.txt", "text-model").family == "llama"
    twin = inline_plugin(npu_proxy_register_model_formats=lambda register: register(Text()))
    clash = "'text' is registered by both plugin 'one' and plugin 'two'"
    with pytest.raises(StartupError, match=clash):
        make_app(test_settings(tmp_path), [], {"one": plugin, "two": twin})


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
        # A request's completion is published once its response has gone out, so the
        # client can be a moment ahead of the sinks.
        deadline = time.monotonic() + 5
        while server.ctx.bus.failures["broken"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.ctx.bus.failures["broken"] == 2
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


# The two tests below import what they use themselves, so that they stay one block.


def test_hook_register_commands() -> None:
    import click
    from click.testing import CliRunner
    from npu_proxy.checks import HOST_KEY
    from npu_proxy.cli import main
    from npu_proxy.testing import make_host

    @click.command()
    @click.argument("who")
    def greet(who: str) -> None:
        """Greet WHO."""
        click.echo(f"hello, {who}")

    plugin = inline_plugin(npu_proxy_register_commands=lambda register: register(greet))
    host = make_host([], {"greeter": plugin})
    result = CliRunner().invoke(main, ["greet", "npu"], obj={HOST_KEY: host})
    assert (result.exit_code, result.output) == (0, "hello, npu\n")


def test_hook_register_doctor_checks(tmp_path: Path) -> None:
    from npu_proxy.checks import Check, DoctorCheck
    from npu_proxy.doctor import render, run_checks
    from npu_proxy.settings import Settings
    from npu_proxy.testing import free_port, make_host

    def disk_check(settings: Settings) -> list[Check]:
        return [Check("models", "warn", f"{settings.model_path.name} is on a slow disk",
                      fix="move it")]

    plugin = inline_plugin(npu_proxy_register_doctor_checks=lambda register: register(
        DoctorCheck("slow-disk", "models", disk_check)))
    overrides = {"model_path": str(tmp_path), "host": "127.0.0.1", "port": free_port(),
                 "real_inference": False}
    found = run_checks(overrides, make_host([], {"disks": plugin}))
    [mine] = [c for c in found if c.plugin == "disks"]
    assert (mine.area, mine.status, mine.message) == (
        "models", "warn", f"{tmp_path.name} is on a slow disk")
    assert f"\nmodels (plugin disks)\n  WARN  {tmp_path.name} is on a slow disk\n" \
        in render(found)

"""Plugin discovery, selection, isolation and reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from core_test_plugins import make_distribution
from npu_proxy.app import StartupError, create_app
from npu_proxy.engine.routing import RoutingPolicy, TokenThresholdPolicy
from npu_proxy.plugins import BUILTIN_PLUGINS, PluginError, PluginHost
from npu_proxy.testing import inline_plugin, make_host, test_settings

TINY_MODULE = '''
from npu_proxy.engine.routing import RouteDecision, RoutingPolicy
from npu_proxy.hookspecs import hookimpl


class AlwaysCpu(RoutingPolicy):
    name = "always_cpu"

    def choose(self, ctx):
        if ctx.usable("CPU"):
            return RouteDecision("CPU", "always_cpu")
        return RouteDecision(None, "cpu_unavailable")


@hookimpl
def npu_proxy_register_routing_policies(register):
    register(AlwaysCpu())
'''


def cli(*args: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "NPU_PROXY_REAL_INFERENCE": "0", **env}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "npu_proxy", *args],
        capture_output=True, text=True, env=environ, timeout=120,
    )


@pytest.fixture
def tiny_site(tmp_path: Path) -> Path:
    return make_distribution(
        tmp_path, "npu-proxy-tiny", "tiny_policy", TINY_MODULE, "npu_proxy.routing"
    )


def test_a_third_party_policy_is_discovered_listed_and_selected(
    tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = cli("plugins", "--json", site=tiny_site)
    assert listed.returncode == 0, listed.stderr
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    tiny = records["tiny-policy"]
    assert tiny["kind"] == "routing" and tiny["distribution"] == "npu-proxy-tiny"
    assert tiny["version"] == "0.1.0" and not tiny["builtin"] and tiny["error"] is None
    assert tiny["registered"] == ["RoutingPolicy:always_cpu"]
    assert records["builtin"]["builtin"] is True

    selected = cli("--plugins", "tiny-policy", "plugins", "--json", site=tiny_site)
    names = {r["name"] for r in json.loads(selected.stdout)}
    assert names == {"builtin", "tiny-policy"}

    monkeypatch.syspath_prepend(str(tiny_site))
    app = create_app(test_settings(tmp_path, routing="always_cpu"), ["tiny-policy"])
    assert app.state.ctx.engine.policy.name == "always_cpu"


def test_unknown_plugin_stops_serve_and_lists_installed(tiny_site: Path) -> None:
    result = cli("--plugins", "nosuch", "serve", "--port", "1", site=tiny_site)
    assert result.returncode != 0
    assert "nosuch" in result.stderr
    assert "tiny-policy" in result.stderr and "Installed plugins" in result.stderr


def test_broken_autoloaded_plugin_is_skipped_and_shown(tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path, "npu-proxy-broken", "broken_policy", "raise ImportError('no such thing')\n",
        "npu_proxy.routing",
    )
    listed = cli("plugins", "--json", site=site)
    assert listed.returncode == 0
    broken = {r["name"]: r for r in json.loads(listed.stdout)}["broken-policy"]
    assert "no such thing" in broken["error"]
    named = cli("--plugins", "broken-policy", "plugins", site=site)
    assert named.returncode != 0 and "broken-policy" in named.stderr


def test_builtins_load_through_the_hooks() -> None:
    host = PluginHost.load([])
    assert [r.module for r in host.records] == list(BUILTIN_PLUGINS)
    assert "npu_proxy_register_routing_policies" in host.records[0].hooks


def test_duplicate_names_name_both_plugins(tmp_path: Path) -> None:
    def register(register: Any) -> None:
        register(TokenThresholdPolicy())

    host = make_host([], {"copycat": inline_plugin(npu_proxy_register_routing_policies=register)})
    with pytest.raises(StartupError) as exc:
        create_app(test_settings(tmp_path), host)
    assert "'builtin'" in str(exc.value) and "'copycat'" in str(exc.value)


def test_wrong_object_type_is_refused(tmp_path: Path) -> None:
    plugin = inline_plugin(npu_proxy_register_routing_policies=lambda register: register("x"))
    with pytest.raises(StartupError, match="RoutingPolicy"):
        create_app(test_settings(tmp_path), make_host([], {"bad": plugin}))


def test_unknown_routing_policy_lists_the_installed(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as exc:
        create_app(test_settings(tmp_path, routing="nope"), [])
    assert "nope" in str(exc.value) and "token_threshold" in str(exc.value)


def test_each_app_has_its_own_plugin_manager(tmp_path: Path) -> None:
    class Extra(RoutingPolicy):
        name = "extra"

        def choose(self, ctx: Any) -> Any:
            raise AssertionError("not called")

    one = create_app(test_settings(tmp_path), make_host([], {
        "extra": inline_plugin(npu_proxy_register_routing_policies=lambda register: register(
            Extra()))}))
    two = create_app(test_settings(tmp_path), [])
    assert one.state.ctx.plugins.pm is not two.state.ctx.plugins.pm
    assert two.state.ctx.plugins.record("extra") is None


def test_a_misspelled_hook_is_refused() -> None:
    host = PluginHost.load([])
    with pytest.raises(Exception, match="npu_proxy_register_backend"):
        host.add_inline("typo", inline_plugin(npu_proxy_register_backend=lambda register: None))


def test_failing_registration_of_a_named_plugin_is_fatal(tmp_path: Path) -> None:
    def explode(register: Any) -> None:
        raise RuntimeError("kaput")

    host = make_host([], {"boom": inline_plugin(npu_proxy_register_backends=explode)})
    host.requested.add("boom")
    with pytest.raises(StartupError, match="boom"):
        create_app(test_settings(tmp_path), host)
    assert isinstance(PluginError("x"), Exception)

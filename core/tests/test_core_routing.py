"""The built-in token_threshold policy: its contract, its own setting, and every fallback
reason end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_test_plugins import SimBackend
from npu_proxy.app import StartupError, create_app
from npu_proxy.engine.errors import BusyError, NoDeviceError, PromptTooLongError
from npu_proxy.engine.lifecycle import ResidencyState
from npu_proxy.engine.routing import RouteReason, TokenThresholdPolicy, TokenThresholdSettings
from npu_proxy.testing import RoutingPolicyContract, routing_context, test_settings


class TestTokenThresholdContract(RoutingPolicyContract):
    @pytest.fixture
    def policy(self) -> TokenThresholdPolicy:
        return TokenThresholdPolicy()


def test_fallback_order_prefers_the_configured_device() -> None:
    policy = TokenThresholdPolicy()
    devices = {"NPU": {}, "GPU": {}, "CPU": {}}
    ctx = routing_context(devices, token_count=5000, fallback="CPU")
    assert policy.choose(ctx).device == "CPU"
    ctx = routing_context(devices, token_count=5000)
    assert policy.choose(ctx).device == "GPU"  # auto: first available of NPU, GPU, CPU


def test_the_token_limit_is_the_policy_s_own_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("NPU_PROXY_TOKEN_LIMIT", raising=False)
    assert TokenThresholdSettings().token_limit == 1800
    policy = TokenThresholdPolicy(TokenThresholdSettings(token_limit=100))
    devices = {"NPU": {}, "CPU": {}}
    assert policy.choose(routing_context(devices, token_count=100)).device == "NPU"
    over = policy.choose(routing_context(devices, token_count=101))
    assert (over.device, over.reason) == ("CPU", RouteReason.OVER_TOKEN_LIMIT)
    monkeypatch.setenv("NPU_PROXY_TOKEN_LIMIT", "300")
    app = create_app(test_settings(tmp_path), [])
    assert app.state.ctx.engine.policy.settings.token_limit == 300


@pytest.mark.parametrize("value", ["0", "many"])
def test_an_invalid_token_limit_stops_startup_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, value: str
) -> None:
    monkeypatch.setenv("NPU_PROXY_TOKEN_LIMIT", value)
    with pytest.raises(StartupError, match="NPU_PROXY_TOKEN_LIMIT"):
        create_app(test_settings(tmp_path), [])


@pytest.mark.parametrize(
    ("reason", "wire"),
    [(RouteReason.PREFERRED, "preferred_device"),
     (RouteReason.OVER_TOKEN_LIMIT, "token_limit_exceeded"),
     (RouteReason.PREFERRED_ABSENT, "preferred_device_absent"),
     (RouteReason.OVER_DEVICE_PROMPT_LEN, "device_prompt_limit_exceeded"),
     (RouteReason.QUEUE_FULL, "queue_full"), (RouteReason.LOAD_FAILED, "load_failed"),
     (RouteReason.UNSUPPORTED, "model_unsupported_on_device"),
     (RouteReason.ONLY_DEVICE, "only_available_device"),
     (RouteReason.PREFIX_AFFINITY, "prefix_affinity"),
     (RouteReason.FAILOVER, "failover")],
)
def test_route_reasons_keep_their_wire_values(reason: RouteReason, wire: str) -> None:
    assert reason == wire and str(reason) == wire and f"{reason}" == wire
    assert len(RouteReason) == 10


def test_residency_states_keep_their_wire_values() -> None:
    assert [str(s) for s in ResidencyState] == ["loading", "loaded", "failed"]


async def route_of(ctx: Any, request: Any) -> Any:
    async with await ctx.engine.generate(request) as generation:
        async for _ in generation:
            pass
        return generation.route


def devices(**npu: Any) -> tuple[SimBackend, SimBackend]:
    return SimBackend("NPU", token_delay=0.001, **npu), SimBackend("CPU", token_delay=0.001)


async def test_short_prompt_runs_on_the_preferred_device(
    make_engine: Any, request_for: Any
) -> None:
    ctx = await make_engine(*devices())
    route = await route_of(ctx, request_for("short", max_tokens=2))
    assert (route.device, route.reason) == ("NPU", RouteReason.PREFERRED)
    assert route.token_count == await ctx.engine.count_tokens(request_for("short"))


async def test_over_the_token_limit_falls_back(
    make_engine: Any, request_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_TOKEN_LIMIT", "20")  # the policy's own setting
    ctx = await make_engine(*devices())
    route = await route_of(ctx, request_for("word " * 40, max_tokens=2))
    assert (route.device, route.reason) == ("CPU", RouteReason.OVER_TOKEN_LIMIT)
    assert route.token_count > 20


async def test_absent_preferred_device_falls_back(make_engine: Any, request_for: Any) -> None:
    ctx = await make_engine(*devices(present=False))
    route = await route_of(ctx, request_for("hi", max_tokens=2))
    assert (route.device, route.reason) == ("CPU", RouteReason.PREFERRED_ABSENT)


async def test_prompt_over_the_compiled_length_falls_back(
    make_engine: Any, request_for: Any
) -> None:
    npu, cpu = devices(max_prompt_len=30)
    ctx = await make_engine(npu, cpu)
    route = await route_of(ctx, request_for("word " * 40, max_tokens=2))
    assert (route.device, route.reason) == ("CPU", RouteReason.OVER_DEVICE_PROMPT_LEN)
    assert npu.counters.started == 0  # never sent to fail on the NPU


async def test_full_queue_falls_back(make_engine: Any, request_for: Any) -> None:
    npu = SimBackend("NPU", token_delay=0.02)
    cpu = SimBackend("CPU", token_delay=0.001)
    ctx = await make_engine(npu, cpu, max_queue=0)
    busy = asyncio.create_task(route_of(ctx, request_for("occupies the npu", max_tokens=5)))
    await asyncio.sleep(0.02)
    route = await route_of(ctx, request_for("second", max_tokens=2))
    assert (route.device, route.reason) == ("CPU", RouteReason.QUEUE_FULL)
    assert (await busy).device == "NPU"


async def test_failed_load_falls_back(make_engine: Any, request_for: Any) -> None:
    ctx = await make_engine(*devices(fail_load={"mock:latest"}))
    route = await route_of(ctx, request_for("hi", max_tokens=2))
    assert (route.device, route.reason) == ("CPU", RouteReason.LOAD_FAILED)
    failed = [m for m in ctx.engine.lifecycle.residents() if m.state == "failed"]
    assert [(m.device, m.error) for m in failed] == [
        ("NPU", "simulated failure loading mock:latest on NPU")
    ]


async def test_nothing_fits_is_a_clear_error(make_engine: Any, request_for: Any) -> None:
    ctx = await make_engine(SimBackend("NPU", max_prompt_len=10))
    with pytest.raises(PromptTooLongError) as exc:
        await ctx.engine.generate(request_for("word " * 40))
    assert "10" in exc.value.message and str(exc.value.tokens) in exc.value.message


async def test_every_queue_full_is_busy(make_engine: Any, request_for: Any) -> None:
    ctx = await make_engine(SimBackend("NPU", token_delay=0.02), max_queue=0)
    busy = asyncio.create_task(route_of(ctx, request_for("occupies", max_tokens=3)))
    await asyncio.sleep(0.01)
    with pytest.raises(BusyError):
        await ctx.engine.generate(request_for("refused"))
    await busy


async def test_no_device_names_what_is_absent(make_engine: Any, request_for: Any) -> None:
    ctx = await make_engine(SimBackend("NPU", present=False))
    with pytest.raises(NoDeviceError) as exc:
        await ctx.engine.generate(request_for("hi"))
    assert "NPU" in exc.value.message

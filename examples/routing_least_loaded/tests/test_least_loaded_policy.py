"""The least_loaded policy: the core's routing contract plus its own behaviour."""

from __future__ import annotations

import pytest
from npu_proxy.engine.routing import RouteReason
from npu_proxy.testing import RoutingPolicyContract, routing_context
from npu_proxy_routing_least_loaded import LeastLoadedPolicy, LeastLoadedReason


class TestLeastLoadedContract(RoutingPolicyContract):
    """Every routing policy must pass these (they come with npu-proxy)."""

    @pytest.fixture
    def policy(self) -> LeastLoadedPolicy:
        return LeastLoadedPolicy()


@pytest.fixture
def policy() -> LeastLoadedPolicy:
    return LeastLoadedPolicy()


def test_idle_devices_tie_and_the_npu_wins(policy: LeastLoadedPolicy) -> None:
    decision = policy.choose(routing_context({"CPU": {}, "GPU": {}, "NPU": {}}))
    assert (decision.device, decision.reason) == ("NPU", LeastLoadedReason.TIE)


def test_gpu_beats_cpu_on_a_tie(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({"NPU": {"in_flight": 1}, "CPU": {}, "GPU": {}})
    assert policy.choose(ctx).device == "GPU"


def test_shortest_queue_wins(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({
        "NPU": {"in_flight": 1, "queue_depth": 3},
        "CPU": {"in_flight": 1, "queue_depth": 1},
    })
    decision = policy.choose(ctx)
    assert (decision.device, decision.reason) == ("CPU", LeastLoadedReason.LEAST_LOADED)


def test_load_is_counted_per_parallel_slot(policy: LeastLoadedPolicy) -> None:
    # The CPU runs 3 of 4 slots (0.75 per slot); the NPU has 1 running (1.0 per slot).
    ctx = routing_context({
        "NPU": {"in_flight": 1, "max_parallel": 1},
        "CPU": {"in_flight": 3, "max_parallel": 4},
    })
    assert policy.choose(ctx).device == "CPU"


def test_token_limit_does_not_matter(
    policy: LeastLoadedPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NPU_PROXY_TOKEN_LIMIT belongs to the token_threshold policy, not to this one
    monkeypatch.setenv("NPU_PROXY_TOKEN_LIMIT", "10")
    ctx = routing_context({"NPU": {}, "CPU": {"in_flight": 1}}, token_count=5000)
    assert policy.choose(ctx).device == "NPU"


def test_a_single_usable_device_says_so(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({"NPU": {"present": False}, "CPU": {"in_flight": 1, "queue_depth": 9}})
    decision = policy.choose(ctx)
    assert (decision.device, decision.reason) == ("CPU", LeastLoadedReason.ONLY_DEVICE)


def test_a_full_queue_is_avoided_even_when_shorter_per_slot(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({
        "NPU": {"in_flight": 1, "queue_depth": 2, "queue_limit": 2},
        "CPU": {"in_flight": 4, "queue_depth": 20, "max_parallel": 4},
    })
    assert policy.choose(ctx).device == "CPU"


def test_all_queues_full_picks_the_least_loaded_and_says_why(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({
        "NPU": {"in_flight": 1, "queue_depth": 2, "queue_limit": 2},
        "CPU": {"in_flight": 1, "queue_depth": 1, "queue_limit": 1},
    })
    decision = policy.choose(ctx)
    assert (decision.device, decision.reason) == ("CPU", RouteReason.QUEUE_FULL)


def test_unknown_devices_sort_after_the_known_ones(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({"ZZZ": {}, "AAA": {}, "CPU": {}})
    assert policy.choose(ctx).device == "CPU"
    ctx = routing_context({"ZZZ": {}, "AAA": {}})
    assert policy.choose(ctx).device == "AAA"


def test_nothing_usable_explains_the_preferred_device(policy: LeastLoadedPolicy) -> None:
    ctx = routing_context({"NPU": {"prompt_limit": 10}}, token_count=50)
    decision = policy.choose(ctx)
    assert decision.device is None
    assert decision.reason == RouteReason.OVER_DEVICE_PROMPT_LEN

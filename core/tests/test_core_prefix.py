"""Prompt prefixes: fingerprints, the directory of who read what, prefix affinity in the
built-in policy, and the engine preparing each prompt once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_test_plugins import MODELS, SimBackend
from npu_proxy.engine.events import GenerationFinished, MetricEvent, MetricsSink
from npu_proxy.engine.prefix import PREFIX_BLOCK, PrefixDirectory, fingerprint
from npu_proxy.engine.routing import RouteReason, TokenThresholdPolicy
from npu_proxy.engine.types import GenerationRequest, Message, SamplingOptions
from npu_proxy.testing import routing_context


def test_fingerprints_share_exactly_the_shared_whole_blocks() -> None:
    a = list(range(3 * PREFIX_BLOCK + 10))
    b = a[: 2 * PREFIX_BLOCK] + [-1] * (PREFIX_BLOCK + 10)
    fa, fb = fingerprint(a), fingerprint(b)
    assert len(fa) == 3  # the trailing partial block is not fingerprinted
    assert fa[:2] == fb[:2] and fa[2] != fb[2]
    assert fingerprint(a[: PREFIX_BLOCK - 1]) == ()
    assert fingerprint(list(a)) == fa  # stable


def test_the_directory_tells_how_much_each_device_has_read() -> None:
    directory = PrefixDirectory()
    long = fingerprint(list(range(4 * PREFIX_BLOCK)))
    directory.record("m", long, "CPU")
    directory.record("m", long[:2], "GPU")
    assert directory.holders("m", long) == {"CPU": 4 * PREFIX_BLOCK, "GPU": 2 * PREFIX_BLOCK}
    assert directory.holders("other", long) == {}
    other = fingerprint([-1] * PREFIX_BLOCK + list(range(3 * PREFIX_BLOCK)))
    assert directory.holders("m", other) == {}  # the first block differs: nothing shared
    directory.forget("m", "CPU")
    assert directory.holders("m", long) == {"GPU": 2 * PREFIX_BLOCK}


def test_the_directory_forgets_the_least_recently_read_blocks_first() -> None:
    directory = PrefixDirectory(capacity=4)
    first = fingerprint(list(range(2 * PREFIX_BLOCK)))
    second = fingerprint([-1] * (2 * PREFIX_BLOCK))
    third = fingerprint([-2] * (2 * PREFIX_BLOCK))
    directory.record("m", first, "CPU")
    directory.record("m", second, "CPU")
    directory.record("m", first, "CPU")  # read again: now the most recent
    directory.record("m", third, "CPU")
    assert len(directory) == 4
    assert directory.holders("m", first) == {"CPU": 2 * PREFIX_BLOCK}
    assert directory.holders("m", second) == {}


def test_the_policy_follows_the_prefix_unless_its_holder_cannot_take_it() -> None:
    policy = TokenThresholdPolicy()
    held = {"NPU": {}, "CPU": {"prefix_tokens": 256}}
    decision = policy.choose(routing_context(held, token_count=300))
    assert (decision.device, decision.reason) == ("CPU", RouteReason.PREFIX_AFFINITY)
    full = {"NPU": {}, "CPU": {"prefix_tokens": 256, "queue_limit": 0, "in_flight": 1}}
    decision = policy.choose(routing_context(full, token_count=300))
    assert (decision.device, decision.reason) == ("NPU", RouteReason.QUEUE_FULL)
    too_long = {"NPU": {}, "CPU": {"prefix_tokens": 256, "prompt_limit": 280}}
    decision = policy.choose(routing_context(too_long, token_count=300))
    assert (decision.device, decision.reason) == ("NPU", RouteReason.OVER_DEVICE_PROMPT_LEN)
    both = {"NPU": {"prefix_tokens": 256}, "CPU": {"prefix_tokens": 256}}
    decision = policy.choose(routing_context(both, token_count=300))
    assert (decision.device, decision.reason) == ("NPU", RouteReason.PREFERRED)


class Recorder(MetricsSink):
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def handle(self, event: MetricEvent) -> None:
        self.events.append(event)


def conversation(turns: int, words_per_turn: int = 2 * PREFIX_BLOCK) -> GenerationRequest:
    """An agent's conversation after ``turns`` exchanges: each turn adds a user message."""
    messages = [Message("system", " ".join(f"rule{i}" for i in range(words_per_turn)))]
    for turn in range(turns):
        messages.append(Message("user", " ".join(f"t{turn}w{i}" for i in range(words_per_turn))))
        messages.append(Message("assistant", "ok"))
    messages.append(Message("user", "next"))
    return GenerationRequest(model="mock", messages=tuple(messages),
                             options=SamplingOptions(max_tokens=3))


async def run(ctx: Any, request: GenerationRequest) -> tuple[Any, Any]:
    async with await ctx.engine.generate(request) as generation:
        async for _ in generation:
            pass
        return generation.route, generation.done


async def test_the_engine_prepares_each_prompt_once(make_engine: Any) -> None:
    sim = SimBackend("CPU")
    ctx = await make_engine(sim)
    route, done = await run(ctx, conversation(1))
    assert sim.counters.tokenizations == 1  # the count, the route and the device's read
    assert route.token_count == done.usage.prompt_tokens


async def test_a_conversation_stays_where_its_prefix_is_cached(make_engine: Any) -> None:
    npu = SimBackend("NPU", token_delay=0.03)
    cpu = SimBackend("CPU", token_delay=0.001)
    ctx = await make_engine(npu, cpu, max_queue=0)
    recorder = Recorder()
    ctx.engine.bus.sinks.append(recorder)
    # Turn 1 overflows to the CPU while the NPU is busy.
    busy = asyncio.create_task(run(ctx, GenerationRequest(
        model="mock", messages=(Message("user", "occupy"),),
        options=SamplingOptions(max_tokens=5))))
    await asyncio.sleep(0.02)
    route, done = await run(ctx, conversation(1))
    assert (route.device, route.reason) == ("CPU", RouteReason.QUEUE_FULL)
    assert done.usage.cached_tokens == 0
    await busy
    # Turn 2: the NPU is free and preferred, but the CPU holds the conversation.
    route, done = await run(ctx, conversation(2))
    assert (route.device, route.reason) == ("CPU", RouteReason.PREFIX_AFFINITY)
    assert done.usage.cached_tokens >= 4 * PREFIX_BLOCK
    finished = [e for e in recorder.events if isinstance(e, GenerationFinished)]
    assert finished[-1].cached_tokens == done.usage.cached_tokens
    # Turn 3 while the CPU is busy with another turn of the same conversation: the
    # full queue overrides the prefix, and the route says so.
    cpu.token_delay = 0.03
    busy = asyncio.create_task(run(ctx, conversation(3)))
    await asyncio.sleep(0.02)
    assert cpu.counters.active == 1
    route, done = await run(ctx, conversation(3))
    assert (route.device, route.reason) == ("NPU", RouteReason.QUEUE_FULL)
    assert (await busy)[0].reason == RouteReason.PREFIX_AFFINITY


async def test_a_prompt_too_long_for_the_holder_goes_elsewhere(make_engine: Any) -> None:
    npu = SimBackend("NPU", present=False)
    first, second = conversation(1), conversation(2)
    first_tokens = (await npu.prepare(MODELS[0], first)).token_count
    cpu = SimBackend("CPU", max_prompt_len=first_tokens + 10)
    ctx = await make_engine(npu, cpu)
    route, _ = await run(ctx, first)
    assert (route.device, route.reason) == ("CPU", RouteReason.PREFERRED_ABSENT)
    npu.present = True
    await ctx.engine.probe()
    route, _ = await run(ctx, second)  # shares the prefix, but no longer fits the CPU
    assert (route.device, route.reason) == ("NPU", RouteReason.OVER_DEVICE_PROMPT_LEN)


@pytest.mark.parametrize("how", ["unload", "keep_alive_0"])
async def test_unloading_a_model_forgets_its_prefixes(make_engine: Any, how: str) -> None:
    sim = SimBackend("CPU")
    ctx = await make_engine(sim)
    await run(ctx, conversation(1))
    _, done = await run(ctx, conversation(2))
    assert done.usage.cached_tokens > 0
    if how == "unload":
        await ctx.engine.unload("mock")
    else:
        request = conversation(2)
        async with await ctx.engine.generate(
                GenerationRequest(model="mock", messages=request.messages,
                                  options=request.options, keep_alive=0)) as generation:
            async for _ in generation:
                pass
        for _ in range(50):
            if not ctx.engine.running():
                break
            await asyncio.sleep(0.01)
    assert not ctx.engine.running()
    assert len(ctx.engine.prefixes) == 0
    _, done = await run(ctx, conversation(2))
    assert done.usage.cached_tokens == 0

"""The scheduler and model lifecycle, driven through the engine with simulated devices."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_test_plugins import SimBackend
from npu_proxy.engine.errors import BusyError, InferenceTimeoutError
from npu_proxy.engine.scheduler import DeviceQueue
from npu_proxy.engine.types import Done, FinishReason, TextDelta


async def run(ctx: Any, request: Any) -> list[Any]:
    async with await ctx.engine.generate(request) as generation:
        return [event async for event in generation]


async def test_requests_run_in_fifo_order(make_engine: Any, request_for: Any) -> None:
    npu = SimBackend("NPU", token_delay=0.002)
    ctx = await make_engine(npu)
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(run(ctx, request_for(f"request {i}", max_tokens=3))))
        await asyncio.sleep(0.001)  # submit in a known order
    await asyncio.gather(*tasks)
    order = [next(i for i in range(5) if f"request {i}" in p) for p in npu.counters.prompts]
    assert order == [0, 1, 2, 3, 4]


async def test_full_queue_is_busy_while_admitted_requests_finish(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.01)
    ctx = await make_engine(npu, max_queue=2)
    admitted = [asyncio.create_task(run(ctx, request_for(f"r{i}", max_tokens=5))) for i in range(3)]
    await asyncio.sleep(0.02)  # one running, two waiting
    assert ctx.engine.queues["NPU"].waiting == 2
    with pytest.raises(BusyError) as refused:
        await ctx.engine.generate(request_for("one too many"))
    assert refused.value.status == 503 and refused.value.retry_after >= 1
    results = await asyncio.gather(*admitted)
    assert all(isinstance(events[-1], Done) for events in results)
    assert npu.counters.finished == 3


async def test_a_cancelled_waiter_never_reaches_the_device(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.01)
    ctx = await make_engine(npu)
    first = asyncio.create_task(run(ctx, request_for("first", max_tokens=5)))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(ctx.engine.generate(request_for("never runs")))
    await asyncio.sleep(0.01)
    assert ctx.engine.queues["NPU"].waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert ctx.engine.queues["NPU"].waiting == 0
    await first
    await run(ctx, request_for("after", max_tokens=2))
    assert not any("never runs" in p for p in npu.counters.prompts)
    assert npu.counters.started == 2
    assert ctx.engine.queues["NPU"].in_flight == 0


async def test_cancelling_one_stream_leaves_the_others_running(
    make_engine: Any, request_for: Any
) -> None:
    cpu = SimBackend("CPU", token_delay=0.01, max_parallel=3)
    ctx = await make_engine(cpu, device="CPU")

    async def cut_short() -> int:
        pieces = 0
        async with await ctx.engine.generate(request_for("cut", max_tokens=10)) as generation:
            async for event in generation:
                pieces += isinstance(event, TextDelta)
                if pieces == 2:
                    break
        return pieces

    others = [asyncio.create_task(run(ctx, request_for(f"o{i}", max_tokens=10))) for i in range(2)]
    assert await cut_short() == 2
    results = await asyncio.gather(*others)
    assert [events[-1].usage.completion_tokens for events in results] == [10, 10]
    assert cpu.counters.cancelled == 1 and cpu.counters.finished == 2
    assert cpu.counters.peak_active == 3
    assert ctx.engine.queues["CPU"].in_flight == 0


async def test_the_npu_never_runs_two_generations_at_once(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.002, max_parallel=1, max_loaded_models=1)
    ctx = await make_engine(npu)
    await asyncio.gather(*(run(ctx, request_for(f"n{i}", max_tokens=4)) for i in range(6)))
    assert npu.counters.finished == 6
    assert npu.counters.peak_active == 1


async def test_keep_alive_expiry_unloads(make_engine: Any, request_for: Any) -> None:
    npu = SimBackend("NPU", token_delay=0.001)
    ctx = await make_engine(npu)
    await run(ctx, request_for(max_tokens=2, keep_alive=0.2))
    assert [r.info.name for r in ctx.engine.running()] == ["mock:latest"]
    await asyncio.sleep(0.5)
    assert ctx.engine.running() == []
    assert npu.counters.unloads == 1


async def test_keep_alive_zero_unloads_at_once_and_negative_keeps(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.001)
    ctx = await make_engine(npu, keep_alive=0.1)
    await run(ctx, request_for(max_tokens=2, keep_alive=0))
    await asyncio.sleep(0.01)
    assert ctx.engine.running() == [] and npu.counters.unloads == 1
    await run(ctx, request_for(max_tokens=2, keep_alive=-1))
    await asyncio.sleep(0.3)  # longer than the default keep_alive
    assert [r.info.name for r in ctx.engine.running()] == ["mock:latest"]


async def test_another_model_swaps_the_npu_without_restart(
    make_engine: Any, request_for: Any
) -> None:
    from npu_proxy.engine.store import ModelStore

    npu = SimBackend("NPU", token_delay=0.001, max_loaded_models=1)
    ctx = await make_engine(npu)
    store: ModelStore = ctx.store
    await store.acopy("mock", "other:1")
    await run(ctx, request_for(model="mock", max_tokens=2, keep_alive=-1))
    await run(ctx, request_for(model="other:1", max_tokens=2, keep_alive=-1))
    assert [r.info.name for r in ctx.engine.running()] == ["other:1"]
    assert npu.counters.loads == 2 and npu.counters.unloads == 1


async def test_explicit_unload_waits_for_the_running_request(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.01)
    ctx = await make_engine(npu)
    running = asyncio.create_task(run(ctx, request_for(max_tokens=5, keep_alive=-1)))
    await asyncio.sleep(0.02)
    assert await ctx.engine.unload("mock") is True
    events = await running
    assert isinstance(events[-1], Done)
    await asyncio.sleep(0.01)
    assert ctx.engine.running() == [] and npu.counters.unloads == 1


async def test_inference_timeout_stops_a_wedged_generation(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0.05)
    ctx = await make_engine(npu, inference_timeout=0.12)
    with pytest.raises(InferenceTimeoutError):
        await run(ctx, request_for(max_tokens=50))
    assert npu.counters.cancelled == 1
    _, message = ctx.engine.last_failure["NPU"]
    assert "longer than 0.12 s" in message
    assert ctx.engine.queues["NPU"].in_flight == 0


async def test_counts_and_timings_are_measured(make_engine: Any, request_for: Any) -> None:
    npu = SimBackend("NPU", token_delay=0.005, load_delay=0.05)
    ctx = await make_engine(npu)
    events = await run(ctx, request_for("count me", max_tokens=4))
    done = events[-1]
    assert done.finish_reason == FinishReason.LENGTH
    assert done.usage.completion_tokens == 4 == sum(isinstance(e, TextDelta) for e in events)
    assert done.usage.load_duration >= 50_000_000
    assert done.usage.total_duration >= done.usage.load_duration + done.usage.decode_duration
    again = (await run(ctx, request_for("count me", max_tokens=4)))[-1]
    assert again.usage.load_duration == 0  # already resident


async def test_device_queue_hands_slots_on_in_order() -> None:
    queue = DeviceQueue("X", slots=1, limit=3)
    first = queue.reserve()
    await first.acquire()
    second, third = queue.reserve(), queue.reserve()
    order: list[str] = []

    async def wait(ticket: Any, name: str) -> None:
        await ticket.acquire()
        order.append(name)
        ticket.release()

    tasks = [asyncio.create_task(wait(third, "third")), asyncio.create_task(wait(second, "second"))]
    await asyncio.sleep(0)
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["second", "third"]
    assert queue.in_flight == 0 and queue.waiting == 0


async def test_an_unbounded_request_is_bounded_by_max_tokens(
    make_engine: Any, request_for: Any
) -> None:
    npu = SimBackend("NPU", token_delay=0)
    ctx = await make_engine(npu, max_tokens=5)
    events = await run(ctx, request_for("ramble on"))
    done = events[-1]
    assert done.finish_reason == FinishReason.LENGTH and done.usage.completion_tokens == 5
    unbounded = await make_engine(SimBackend("CPU", token_delay=0), device="CPU", max_tokens=0)
    assert (await run(unbounded, request_for("ramble on")))[-1].finish_reason == "stop"

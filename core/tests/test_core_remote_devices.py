"""The seams remote engines use: models discovered at run time, device state that
changes, failover before the first token, local devices before remote replicas, and a
replica order that keeps a conversation on its replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from core_test_plugins import SimBackend, SimLoadedModel
from npu_proxy.engine.backend import LoadedModel
from npu_proxy.engine.errors import (
    BusyError,
    EngineError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelStoreError,
)
from npu_proxy.engine.events import DeviceChanged
from npu_proxy.engine.routing import DeviceState, RoutingContext, fallback_order, replica_order
from npu_proxy.engine.store import ModelStore
from npu_proxy.engine.types import (
    Capability,
    DeviceInfo,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)
from npu_proxy.testing import RecordingSink


def info(name: str, fmt: str = "remote") -> ModelInfo:
    return ModelInfo(name, fmt, "", frozenset({Capability.COMPLETION}), 0)


class Refusing(SimLoadedModel):
    """Fails in ``open`` with the backend's error, before any output (a remote engine)."""

    async def open(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        error = self.backend.open_error  # type: ignore[attr-defined]
        if error is not None:
            raise error
        return self.generate(request)


class RemoteSim(SimBackend):
    remote = True

    def __init__(self, device: str, **kwargs: Any) -> None:
        super().__init__(device, **kwargs)
        self.open_error: EngineError | None = None

    async def load(self, model: ModelInfo) -> LoadedModel:
        await super().load(model)
        return Refusing(self, model)


class Unavailable(EngineError):
    status = 502
    code = "upstream_error"


def test_discovered_models_are_listed_under_stored_and_registered_ones(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    store.register(info("local", "mock"))
    found = store.set_discovered("lab", [info("Local"), info("Qwen/Qwen2.5-7B")])
    assert [m.name for m in found] == ["local:latest", "qwen/qwen2.5-7b:latest"]
    assert store.resolve("local").format == "mock"  # one name; the local facts win
    assert store.resolve("qwen/qwen2.5-7b").format == "remote"
    assert [m.name for m in store.models()] == ["local:latest", "qwen/qwen2.5-7b:latest"]
    with pytest.raises(ModelStoreError, match="served by a remote engine"):
        store.delete("qwen/qwen2.5-7b")
    with pytest.raises(InvalidRequestError):
        store.set_discovered("lab", [info("/abs/path.gguf")])
    store.set_discovered("lab", [])
    with pytest.raises(ModelNotFoundError):
        store.resolve("qwen/qwen2.5-7b")


def test_replica_order_is_stable_and_moves_only_what_a_replica_held() -> None:
    replicas = ["upstream:a", "upstream:b", "upstream:c"]
    keys = [f"conversation {n}" for n in range(60)]
    first = {k: replica_order(k, replicas)[0] for k in keys}
    assert first == {k: replica_order(k, list(reversed(replicas)))[0] for k in keys}
    assert set(first.values()) == set(replicas)
    without_c = {k: replica_order(k, replicas[:2])[0] for k in keys}
    assert all(without_c[k] == first[k] for k in keys if first[k] != "upstream:c")


def test_local_devices_come_before_remote_ones() -> None:
    def state(device: str, remote: bool) -> DeviceState:
        return DeviceState(device, True, True, 0, 4, 0, 1, remote=remote)

    devices = {d: state(d, d.startswith("upstream:"))
               for d in ("upstream:b", "MOCK", "upstream:a", "CPU")}
    ctx = RoutingContext(info("m"), 10, "NPU", None, devices, affinity_key="k")
    order = fallback_order(ctx)
    assert order[:4] == ["NPU", "GPU", "CPU", "MOCK"]
    assert order[4:] == replica_order("k", ["upstream:a", "upstream:b"])


async def test_a_device_failing_before_output_is_failed_over(
    make_engine: Any, request_for: Any,
) -> None:
    one, two = RemoteSim("upstream:one"), RemoteSim("upstream:two")
    ctx = await make_engine(SimBackend("CPU", max_prompt_len=1), one, two, device="CPU")
    request = request_for("a prompt too long for the CPU")
    async with await ctx.engine.generate(request) as generation:
        chosen = generation.route.device
        assert generation.route.reason == "device_prompt_limit_exceeded"
    first, other = (one, two) if chosen == "upstream:one" else (two, one)
    first.open_error = Unavailable("refused")
    async with await ctx.engine.generate(request) as generation:
        assert (generation.route.device, generation.route.reason) == (other.device, "failover")
        assert any(isinstance(e, TextDelta) for e in [e async for e in generation])
    assert "refused" in ctx.engine.last_failure[first.device][1]
    other.open_error = BusyError("busy upstream", retry_after=9)
    with pytest.raises(BusyError) as busy:  # nothing left: the last failure is told
        await ctx.engine.generate(request)
    assert busy.value.retry_after == 9
    first.open_error = InvalidRequestError("the engine refuses this request")
    with pytest.raises(InvalidRequestError):  # the request's fault: no failover
        await ctx.engine.generate(request)
    assert all(q.in_flight == 0 for q in ctx.engine.queues.values())


async def test_reported_device_state_steers_routing(
    make_engine: Any, request_for: Any
) -> None:
    remote = RemoteSim("upstream:one")
    ctx = await make_engine(SimBackend("CPU", max_prompt_len=1), remote, device="CPU")
    request = request_for("a prompt too long for the CPU")
    sink = RecordingSink()
    ctx.bus.sinks.append(sink)
    ctx.engine.report_device(DeviceInfo("upstream:one", False, error="circuit open"))
    ctx.engine.report_device(DeviceInfo("upstream:one", False, error="still open"))
    ctx.engine.report_device(DeviceInfo("upstream:nowhere", True))  # unknown: ignored
    with pytest.raises(EngineError):
        await ctx.engine.generate(request)
    assert ctx.engine.devices["upstream:one"].error == "still open"
    assert "upstream:nowhere" not in ctx.engine.devices
    ctx.engine.report_device(DeviceInfo("upstream:one", True))
    assert sink.of(DeviceChanged) == [  # changes of presence only
        DeviceChanged("upstream:one", False, "circuit open"),
        DeviceChanged("upstream:one", True, "")]
    async with await ctx.engine.generate(request) as generation:
        assert generation.route.device == "upstream:one"

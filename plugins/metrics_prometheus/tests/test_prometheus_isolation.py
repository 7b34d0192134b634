"""Isolation: bounded labels, a failing neighbour sink, and several apps in one process."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import httpx
import prometheus_client
import pytest
from npu_proxy.engine.errors import ModelNotFoundError
from npu_proxy.engine.events import (
    FirstToken,
    GenerationFinished,
    MetricEvent,
    MetricsSink,
    ModelLoaded,
    RouteDecided,
)
from npu_proxy.engine.types import GenerationRequest
from npu_proxy.testing import inline_plugin
from npu_proxy_prometheus import OTHER, PrometheusSink

Probe = Any  # the conftest's Probe (not importable under --import-mode=importlib)
ServeFactory = Callable[..., Any]


class ExplodingSink(MetricsSink):
    """A sink that fails on every event."""

    name = "exploding"

    def handle(self, event: MetricEvent) -> None:
        raise RuntimeError(f"cannot record {type(event).__name__}")


def finished(model: str, device: str = "MOCK") -> GenerationFinished:
    return GenerationFinished(model, device, "stop", 3, 5, 0.5, 10.0, (0.1, 0.1, 0.1, 0.1))


def test_a_failing_sink_breaks_neither_requests_nor_prometheus(
    serve: ServeFactory, request_for: Callable[..., GenerationRequest]
) -> None:
    exploding = inline_plugin(npu_proxy_register_metrics_sinks=lambda register: register(
        ExplodingSink()))
    probe = serve(inline={"exploding": exploding})
    for _ in range(2):
        assert httpx.get(f"{probe.url}/health").json()["status"] == "ok"
    ran = probe.run(request_for("still works"))
    assert ran.done.usage.completion_tokens > 0
    samples = probe.scrape_until(
        lambda s: s.get("npu_proxy_requests_total", endpoint="/health", status="200") == 2
    )
    assert samples.get("npu_proxy_requests_total", endpoint="/health", status="200") == 2
    assert samples.get("npu_proxy_tokens_generated_total", model="mock:latest") == (
        ran.done.usage.completion_tokens
    )
    assert samples.get("npu_proxy_generations_total", model="mock:latest",
                       device=ran.route.device, finish_reason="stop") == 1
    assert probe.server.ctx.bus.failures["exploding"] > 0


def test_random_paths_fold_into_one_endpoint_label(probe: Probe) -> None:
    paths = [f"/{secrets.token_hex(6)}/{secrets.token_hex(4)}" for _ in range(15)]
    for path in paths:
        assert httpx.get(probe.url + path).status_code == 404
    samples = probe.scrape_until(
        lambda s: s.get("npu_proxy_requests_total", endpoint="unmatched", status="404") == 15
    )
    assert samples.get("npu_proxy_requests_total", endpoint="unmatched", status="404") == 15
    assert not any(path.split("/")[1] in samples.text for path in paths)


def test_random_model_names_fold_into_other(probe: Probe) -> None:
    engine = probe.server.ctx.engine
    names = [f"{secrets.token_hex(5)}:{secrets.token_hex(3)}" for _ in range(10)]
    for name in names:
        with pytest.raises(ModelNotFoundError):
            probe.call(engine.generate(GenerationRequest(model=name, prompt="hi")))
    sink = next(s for s in probe.server.ctx.bus.sinks if isinstance(s, PrometheusSink))

    async def deliver(events: list[MetricEvent]) -> None:
        for event in events:
            probe.server.ctx.bus.emit(event)

    # Events naming models and devices the server does not know (as a buggy or
    # third-party backend might send) must not create new series either.
    probe.call(deliver([finished(name, device=name) for name in names]))
    probe.call(deliver([FirstToken("../../etc/passwd", "MOCK", 0.1), finished("")]))
    samples = probe.scrape()
    for metric in (
        "npu_proxy_tokens_generated_total",
        "npu_proxy_inter_token_latency_seconds_count",
        "npu_proxy_time_to_first_token_seconds_count",
    ):
        assert samples.label_values(metric, "model") == {OTHER}
    assert samples.label_values("npu_proxy_generations_total", "device") <= {OTHER, "MOCK"}
    assert samples.get("npu_proxy_tokens_generated_total", model=OTHER) == 5 * 11
    assert not any(name in samples.text for name in names)
    assert sink.labels.model("mock") == "mock:latest"


def test_model_labels_follow_the_model_store(
    probe: Probe, request_for: Callable[..., GenerationRequest]
) -> None:
    ctx = probe.server.ctx
    probe.call(ctx.store.acopy("mock", "my-alias"))
    ran = probe.run(request_for(model="my-alias"))
    samples = probe.scrape()
    assert samples.get("npu_proxy_tokens_generated_total", model="my-alias:latest") == (
        ran.done.usage.completion_tokens
    )
    assert samples.get("npu_proxy_loaded_models", model="my-alias:latest") == 1

    # Deleted from the store while still loaded: the unload is recorded under the label
    # the load was, and later events for the unknown name fold into "other".
    probe.call(ctx.store.adelete("my-alias"))
    assert probe.call(ctx.engine.lifecycle.unload("my-alias:latest")) is True

    async def late_event() -> None:
        ctx.bus.emit(FirstToken("my-alias:latest", ran.route.device, 0.2))

    probe.call(late_event())
    after = probe.scrape()
    assert after.get("npu_proxy_loaded_models", model="my-alias:latest") == 0
    assert after.get("npu_proxy_time_to_first_token_seconds_count", model="my-alias:latest") == 1
    assert after.get("npu_proxy_time_to_first_token_seconds_count", model=OTHER) == 1


def test_two_apps_in_one_process_keep_separate_metrics(
    serve: ServeFactory, request_for: Callable[..., GenerationRequest]
) -> None:
    first, second = serve(), serve()
    a = [first.run(request_for(f"first app {i}")) for i in range(2)]
    b = second.run(request_for("second app"))
    one, two = first.scrape(), second.scrape()
    assert one.get("npu_proxy_tokens_generated_total", model="mock:latest") == sum(
        r.done.usage.completion_tokens for r in a
    )
    assert two.get("npu_proxy_tokens_generated_total", model="mock:latest") == (
        b.done.usage.completion_tokens
    )
    assert one.get("npu_proxy_model_load_duration_seconds_count", model="mock:latest",
                   device=a[0].route.device) == 1
    assert two.get("npu_proxy_model_load_duration_seconds_count", model="mock:latest",
                   device=b.route.device) == 1
    # nothing leaked into the process-global registry
    assert b"npu_proxy_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_an_unbound_sink_knows_no_names() -> None:
    sink = PrometheusSink()
    sink.handle(finished("mock:latest"))
    sink.handle(ModelLoaded("mock:latest", "MOCK", 1.0, 10))
    sink.handle(RouteDecided("mock:latest", "MOCK", "preferred_device", 4))
    text = prometheus_client.generate_latest(sink.registry).decode()
    assert 'npu_proxy_tokens_generated_total{model="other"} 5.0' in text
    assert 'npu_proxy_loaded_models{model="other"} 1.0' in text
    assert 'npu_proxy_routing_decisions_total{device="other",reason="preferred_device"} 1.0' in text


def test_cached_and_evaluated_prompt_tokens_are_counted_per_model_and_device() -> None:
    sink = PrometheusSink()  # unbound: every model and device is counted as "other"
    sink.handle(GenerationFinished("m:latest", "CPU", "stop", 300, 5, 0.5, 10.0, (),
                                   cached_tokens=256))
    sink.handle(GenerationFinished("m:latest", "CPU", "stop", 40, 5, 0.5, 10.0, ()))
    registry = sink.registry
    labels = {"model": OTHER, "device": OTHER}
    assert registry.get_sample_value("npu_proxy_prompt_tokens_cached_total", labels) == 256
    assert registry.get_sample_value("npu_proxy_prompt_tokens_evaluated_total", labels) == 84

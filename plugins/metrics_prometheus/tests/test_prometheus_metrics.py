"""Each metric moves by exactly what real requests did, read back from a live /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import ollama
import pytest
from npu_proxy.engine.engine import Generation
from npu_proxy.engine.types import DeviceInfo, EmbeddingRequest, GenerationRequest, TextDelta

Probe = Any  # the conftest's Probe (not importable under --import-mode=importlib)
MODEL = "mock:latest"


def test_health_and_metrics_over_http_are_counted(probe: Probe) -> None:
    before = probe.scrape()
    for _ in range(3):
        assert httpx.get(f"{probe.url}/health").status_code == 200
    assert httpx.get(f"{probe.url}/health/devices").status_code == 200

    def moved(s: Any) -> bool:
        return s.get("npu_proxy_requests_total", endpoint="/health/devices", status="200") == 1

    after = probe.scrape_until(moved)
    health = {"endpoint": "/health", "status": "200"}
    assert after.get("npu_proxy_requests_total", **health) == (
        before.get("npu_proxy_requests_total", **health) + 3
    )
    assert after.get("npu_proxy_requests_total", endpoint="/health/devices", status="200") == 1
    assert after.get("npu_proxy_request_duration_seconds_count", endpoint="/health") == 3
    # The first scrape was counted under the single label /metrics, once.
    assert after.get("npu_proxy_requests_total", endpoint="/metrics", status="200") >= 1
    assert after.label_values("npu_proxy_requests_total", "endpoint") <= {
        "/health", "/health/devices", "/metrics"
    }


def test_a_generation_moves_every_inference_metric(
    probe: Probe, request_for: Callable[..., GenerationRequest]
) -> None:
    before = probe.scrape()
    ran = probe.run(request_for("tell me about foxes"))
    after = probe.scrape()
    usage, device, reason = ran.done.usage, ran.route.device, ran.route.reason

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert usage.completion_tokens > 1 and ran.pieces == usage.completion_tokens
    assert delta("npu_proxy_tokens_generated_total", model=MODEL) == usage.completion_tokens
    assert delta("npu_proxy_prompt_tokens_total", model=MODEL) == usage.prompt_tokens
    assert delta("npu_proxy_generations_total", model=MODEL, device=device,
                 finish_reason="stop") == 1
    assert delta("npu_proxy_inference_duration_seconds_count", model=MODEL, device=device) == 1
    assert delta("npu_proxy_inference_duration_seconds_sum", model=MODEL, device=device) == (
        pytest.approx((usage.prefill_duration + usage.decode_duration) / 1e9, rel=1e-6)
    )
    assert delta("npu_proxy_time_to_first_token_seconds_count", model=MODEL) == 1
    assert delta("npu_proxy_inter_token_latency_seconds_count", model=MODEL) == ran.pieces - 1
    assert after.get("npu_proxy_tokens_per_second", model=MODEL) == pytest.approx(
        usage.completion_tokens / (usage.decode_duration / 1e9), rel=1e-6
    )
    assert delta("npu_proxy_routing_decisions_total", device=device, reason=reason) == 1
    assert after.get("npu_proxy_loaded_models", model=MODEL) == 1
    assert delta("npu_proxy_model_load_duration_seconds_count", model=MODEL, device=device) == 1
    assert after.get("npu_proxy_queue_depth", device=device) == 0
    assert after.get("npu_proxy_in_flight_requests", device=device) == 0

    # A second generation of a resident model: counted again, not loaded again.
    again = probe.run(request_for("and about dogs", max_tokens=3))
    third = probe.scrape()
    assert again.done.finish_reason.value == "length"
    assert third.get("npu_proxy_tokens_generated_total", model=MODEL) == (
        after.get("npu_proxy_tokens_generated_total", model=MODEL) + 3
    )
    assert third.get("npu_proxy_generations_total", model=MODEL, device=device,
                     finish_reason="length") == 1
    assert third.get("npu_proxy_model_load_duration_seconds_count", model=MODEL,
                     device=device) == 1


def test_loaded_models_goes_back_to_zero_on_unload(
    probe: Probe, request_for: Callable[..., GenerationRequest]
) -> None:
    assert probe.scrape().get("npu_proxy_loaded_models", model=MODEL) == 0
    probe.run(request_for())
    assert probe.scrape().get("npu_proxy_loaded_models", model=MODEL) == 1
    assert probe.call(probe.server.ctx.engine.unload("mock")) is True
    assert probe.scrape().get("npu_proxy_loaded_models", model=MODEL) == 0


def test_queue_depth_and_in_flight_follow_the_device_queue(
    probe: Probe, request_for: Callable[..., GenerationRequest]
) -> None:
    engine = probe.server.ctx.engine
    device = next(iter(engine.backends))
    first: Generation = probe.call(engine.generate(request_for("first")))
    waiting = asyncio.run_coroutine_threadsafe(engine.generate(request_for("second")),
                                               engine.loop)
    second: Generation | None = None
    try:
        queued = probe.scrape_until(lambda s: s.get("npu_proxy_queue_depth", device=device) == 1)
        assert queued.get("npu_proxy_queue_depth", device=device) == 1
        assert queued.get("npu_proxy_in_flight_requests", device=device) == 1
        probe.call(first.aclose())
        second = waiting.result(30)
        running = probe.scrape()
        assert running.get("npu_proxy_queue_depth", device=device) == 0
        assert running.get("npu_proxy_in_flight_requests", device=device) == 1
    finally:
        probe.call(first.aclose())
        if second is not None:
            probe.call(second.aclose())
    idle = probe.scrape()
    assert idle.get("npu_proxy_in_flight_requests", device=device) == 0


def test_a_generation_stopped_early_counts_as_cancelled(
    probe: Probe, request_for: Callable[..., GenerationRequest]
) -> None:
    engine = probe.server.ctx.engine

    async def stop_after_first_piece() -> str:
        async with await engine.generate(request_for("stop me")) as generation:
            async for event in generation:
                assert isinstance(event, TextDelta)
                break
        return generation.route.device

    before = probe.scrape()
    device = probe.call(stop_after_first_piece())
    after = probe.scrape()
    labels = {"model": MODEL, "device": device}
    assert after.get("npu_proxy_generation_failures_total", error="cancelled", **labels) == 1
    assert after.get("npu_proxy_time_to_first_token_seconds_count", model=MODEL) == (
        before.get("npu_proxy_time_to_first_token_seconds_count", model=MODEL) + 1
    )
    assert after.get("npu_proxy_tokens_generated_total", model=MODEL) == (
        before.get("npu_proxy_tokens_generated_total", model=MODEL)
    )
    assert after.get("npu_proxy_in_flight_requests", device=device) == 0


def test_embeddings_are_counted_per_request_and_per_input(probe: Probe) -> None:
    engine = probe.server.ctx.engine
    result = probe.call(engine.embed(EmbeddingRequest("mock-embed", ("one", "two", "three"))))
    samples = probe.scrape()
    device = result.route.device
    assert len(result.result.vectors) == 3
    assert samples.get("npu_proxy_embeddings_total", model="mock-embed:latest",
                       device=device) == 1
    assert samples.get("npu_proxy_embedding_inputs_total", model="mock-embed:latest") == 3


def test_every_device_is_exported_before_any_request(probe: Probe) -> None:
    samples = probe.scrape()
    devices = set(probe.server.ctx.engine.backends)
    assert samples.label_values("npu_proxy_queue_depth", "device") == devices
    assert samples.label_values("npu_proxy_in_flight_requests", "device") == devices


def test_openmetrics_is_served_to_scrapers_that_ask_for_it(probe: Probe) -> None:
    response = httpx.get(
        f"{probe.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    plain = httpx.get(f"{probe.url}/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_errors_under_metrics_are_plain_json(probe: Probe) -> None:
    response = httpx.post(f"{probe.url}/metrics")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}
    missing = httpx.get(f"{probe.url}/metrics/extra")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error"}


def test_ollama_chat_requests_move_the_metrics(serve: Callable[..., Probe]) -> None:
    probe = serve(dialects=("ollama",))
    client = ollama.Client(host=probe.url)
    before = probe.scrape()
    replies = [
        client.chat(model="mock", messages=[{"role": "user", "content": f"question {i}"}])
        for i in range(2)
    ]
    streamed = list(client.chat(model="mock", messages=[{"role": "user", "content": "more"}],
                                stream=True))
    last = streamed[-1]
    after = probe.scrape_until(
        lambda s: s.get("npu_proxy_requests_total", endpoint="/api/chat", status="200") == 3
    )
    assert after.get("npu_proxy_requests_total", endpoint="/api/chat", status="200") == 3
    generated = sum(r.eval_count or 0 for r in replies) + (last.eval_count or 0)
    prompted = sum(r.prompt_eval_count or 0 for r in replies) + (last.prompt_eval_count or 0)
    assert generated > 0 and prompted > 0
    assert after.get("npu_proxy_tokens_generated_total", model=MODEL) - before.get(
        "npu_proxy_tokens_generated_total", model=MODEL) == generated
    assert after.get("npu_proxy_prompt_tokens_total", model=MODEL) - before.get(
        "npu_proxy_prompt_tokens_total", model=MODEL) == prompted
    assert after.get("npu_proxy_time_to_first_token_seconds_count", model=MODEL) == 3
    assert after.get("npu_proxy_inter_token_latency_seconds_count", model=MODEL) == (
        generated - 3
    )


def test_device_availability_follows_what_the_engine_is_told(probe: Probe) -> None:
    engine = probe.server.ctx.engine
    device = next(iter(engine.backends))

    async def report(present: bool) -> None:
        engine.report_device(DeviceInfo(device, present, error="" if present else "down"))

    probe.call(report(False))
    assert probe.scrape().get("npu_proxy_device_available", device=device) == 0
    probe.call(report(True))
    assert probe.scrape().get("npu_proxy_device_available", device=device) == 1

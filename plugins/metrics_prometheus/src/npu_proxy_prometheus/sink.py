"""The Prometheus metrics sink: turns engine events into metrics in a private registry.

Names and labels follow the original npu-proxy specification (``npu_proxy_requests_total``
and the six inference metrics), plus queue, routing, failure, embedding and load metrics.
"""

from __future__ import annotations

from npu_proxy.engine.events import (
    DeviceChanged,
    EmbeddingFinished,
    FirstToken,
    GenerationFailed,
    GenerationFinished,
    MetricEvent,
    MetricsSink,
    ModelLoaded,
    ModelUnloaded,
    QueueChanged,
    RequestCompleted,
    RouteDecided,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .labels import LabelBounds

# Buckets sized for local inference: a first token in tens of milliseconds on a warm
# NPU, generations up to minutes on a CPU, cold NPU compiles of one to two minutes.
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
LOAD_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300)


class PrometheusSink(MetricsSink):
    """Records every event in :attr:`registry` (one registry per sink, never the global one).

    Label values are bounded by :attr:`labels` (see :mod:`npu_proxy_prometheus.labels`);
    bind them to the server context before events arrive (the ``/metrics`` router does).
    """

    name = "prometheus"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = LabelBounds()
        # (model, device) -> the model label it was counted under, for loaded_models
        self._resident: dict[tuple[str, str], str] = {}
        r = self.registry
        self.requests = Counter(
            "npu_proxy_requests_total", "HTTP requests by route template and status.",
            ["endpoint", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "npu_proxy_request_duration_seconds", "HTTP request duration by route template.",
            ["endpoint"], registry=r,
        )
        self.inference_duration = Histogram(
            "npu_proxy_inference_duration_seconds",
            "Device time of a finished generation (prefill plus decode).",
            ["model", "device"], buckets=INFERENCE_BUCKETS, registry=r,
        )
        self.first_token = Histogram(
            "npu_proxy_time_to_first_token_seconds",
            "From admission to the device to the first generated token.",
            ["model"], buckets=FIRST_TOKEN_BUCKETS, registry=r,
        )
        self.inter_token = Histogram(
            "npu_proxy_inter_token_latency_seconds", "Gaps between consecutive streamed tokens.",
            ["model"], buckets=INTER_TOKEN_BUCKETS, registry=r,
        )
        self.tokens_per_second = Gauge(
            "npu_proxy_tokens_per_second", "Decode throughput of the latest finished generation.",
            ["model"], registry=r,
        )
        self.loaded_models = Gauge(
            "npu_proxy_loaded_models", "1 while the model is loaded on any device, else 0.",
            ["model"], registry=r,
        )
        self.tokens_generated = Counter(
            "npu_proxy_tokens_generated_total", "Completion tokens of finished generations.",
            ["model"], registry=r,
        )
        self.prompt_tokens = Counter(
            "npu_proxy_prompt_tokens_total", "Prompt tokens of finished generations.",
            ["model"], registry=r,
        )
        self.prompt_tokens_cached = Counter(
            "npu_proxy_prompt_tokens_cached_total",
            "Prompt tokens read from the device's prefix cache instead of evaluated.",
            ["model", "device"], registry=r,
        )
        self.prompt_tokens_evaluated = Counter(
            "npu_proxy_prompt_tokens_evaluated_total",
            "Prompt tokens the device evaluated (not read from its prefix cache).",
            ["model", "device"], registry=r,
        )
        self.generations = Counter(
            "npu_proxy_generations_total", "Finished generations by finish reason.",
            ["model", "device", "finish_reason"], registry=r,
        )
        self.failures = Counter(
            "npu_proxy_generation_failures_total",
            "Generations that ended without a result, by engine error code "
            "(cancelled: the client went away).",
            ["model", "device", "error"], registry=r,
        )
        self.embeddings = Counter(
            "npu_proxy_embeddings_total", "Embedding requests served.",
            ["model", "device"], registry=r,
        )
        self.embedding_inputs = Counter(
            "npu_proxy_embedding_inputs_total", "Texts embedded.", ["model"], registry=r,
        )
        self.load_duration = Histogram(
            "npu_proxy_model_load_duration_seconds", "Time to load (compile) a model.",
            ["model", "device"], buckets=LOAD_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "npu_proxy_queue_depth", "Requests waiting for a device slot.", ["device"],
            registry=r,
        )
        self.in_flight = Gauge(
            "npu_proxy_in_flight_requests", "Requests holding a device slot.", ["device"],
            registry=r,
        )
        self.device_available = Gauge(
            "npu_proxy_device_available", "1 while a device whose state changes at run "
            "time (a remote engine) is available, 0 while it is down.", ["device"],
            registry=r,
        )
        self.routing_decisions = Counter(
            "npu_proxy_routing_decisions_total", "Routing decisions by device and reason.",
            ["device", "reason"], registry=r,
        )

    def show_devices(self) -> None:
        """Export zero queue gauges for every known device, so idle devices are visible."""
        for device in self.labels.devices:
            self.queue_depth.labels(device)
            self.in_flight.labels(device)

    def handle(self, event: MetricEvent) -> None:
        """Update the metrics ``event`` concerns (contract: :class:`MetricsSink`)."""
        model = self.labels.model
        device = self.labels.device
        match event:
            case RequestCompleted():
                self.requests.labels(event.endpoint, str(event.status)).inc()
                self.request_duration.labels(event.endpoint).observe(event.duration)
            case RouteDecided():
                self.routing_decisions.labels(device(event.device), event.reason).inc()
            case FirstToken():
                self.first_token.labels(model(event.model)).observe(event.seconds)
            case GenerationFinished():
                self._finished(event, model(event.model), device(event.device))
            case GenerationFailed():
                self.failures.labels(model(event.model), device(event.device), event.error).inc()
            case EmbeddingFinished():
                label = model(event.model)
                self.embeddings.labels(label, device(event.device)).inc()
                self.embedding_inputs.labels(label).inc(event.inputs)
            case ModelLoaded():
                label = model(event.model)
                self._resident[(event.model, event.device)] = label
                self.loaded_models.labels(label).set(1)
                self.load_duration.labels(label, device(event.device)).observe(event.seconds)
            case ModelUnloaded():
                label = self._resident.pop((event.model, event.device), model(event.model))
                # Still 1 while another device (or another name folded into it) holds it.
                still = any(other == label for other in self._resident.values())
                self.loaded_models.labels(label).set(1 if still else 0)
            case QueueChanged():
                self.queue_depth.labels(device(event.device)).set(event.waiting)
                self.in_flight.labels(device(event.device)).set(event.in_flight)
            case DeviceChanged():
                self.device_available.labels(device(event.device)).set(int(event.available))

    def _finished(self, event: GenerationFinished, model: str, device: str) -> None:
        self.inference_duration.labels(model, device).observe(event.duration)
        self.tokens_generated.labels(model).inc(event.completion_tokens)
        self.prompt_tokens.labels(model).inc(event.prompt_tokens)
        self.prompt_tokens_cached.labels(model, device).inc(event.cached_tokens)
        self.prompt_tokens_evaluated.labels(model, device).inc(
            event.prompt_tokens - event.cached_tokens)
        self.generations.labels(model, device, event.finish_reason).inc()
        if event.completion_tokens:
            self.tokens_per_second.labels(model).set(event.tokens_per_second)
        inter_token = self.inter_token.labels(model)
        for gap in event.inter_token_latencies:
            inter_token.observe(gap)

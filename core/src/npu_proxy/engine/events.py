"""Observability events the engine and the HTTP layer emit, and their fan-out to sinks.

Metrics sinks (``npu_proxy_register_metrics_sinks``) receive every event. A sink that
raises is logged (once per sink and event type) and never stops the request or another
sink. A sink that fails later, in its own thread (a full disk under a writer), reports
it to the bus (:meth:`EventBus.report_failure`, :meth:`EventBus.report_dropped`):
counted in :attr:`EventBus.failures` and ``/health``, logged once until it recovers.
Events are plain frozen dataclasses; all durations are seconds (float) here, since that
is what metrics systems expect.
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestCompleted:
    """An HTTP request finished (``endpoint`` is the route template, never a raw path)."""

    endpoint: str
    method: str
    status: int
    duration: float


@dataclass(frozen=True, slots=True)
class RouteDecided:
    model: str
    device: str
    reason: str
    token_count: int


@dataclass(frozen=True, slots=True)
class FirstToken:
    model: str
    device: str
    seconds: float  # from admission to the device to the first token


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    model: str
    device: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    duration: float  # on the device, prefill plus decode
    tokens_per_second: float
    inter_token_latencies: tuple[float, ...]
    #: prompt tokens read from the device's prefix cache (part of ``prompt_tokens``)
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    model: str
    device: str
    error: str  # an EngineError code


@dataclass(frozen=True, slots=True)
class EmbeddingFinished:
    model: str
    device: str
    inputs: int
    prompt_tokens: int
    duration: float


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    model: str
    device: str
    seconds: float
    size: int


@dataclass(frozen=True, slots=True)
class ModelUnloaded:
    model: str
    device: str
    reason: str  # keep_alive, explicit, swap, shutdown


@dataclass(frozen=True, slots=True)
class QueueChanged:
    device: str
    waiting: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    """A device went down or came back while the server runs (a remote engine's
    circuit breaker, :meth:`~npu_proxy.engine.engine.Engine.report_device`)."""

    device: str
    available: bool
    reason: str  # why it is down, safe to show ("" once it is back)


MetricEvent = (
    RequestCompleted
    | RouteDecided
    | FirstToken
    | GenerationFinished
    | GenerationFailed
    | EmbeddingFinished
    | ModelLoaded
    | ModelUnloaded
    | QueueChanged
    | DeviceChanged
)


class MetricsSink(abc.ABC):
    """Receives every :data:`MetricEvent`. Register through ``npu_proxy_register_metrics_sinks``.

    ``handle`` runs on the event loop for each event: keep it fast and non-blocking.
    """

    name: str
    #: the bus delivering to this sink, set by :meth:`attach`; where it reports failures
    bus: EventBus | None = None

    @abc.abstractmethod
    def handle(self, event: MetricEvent) -> None:
        """Record one event. Exceptions are contained by the :class:`EventBus`."""

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Flush and release resources at shutdown."""

    def attach(self, bus: EventBus) -> None:
        """Called once by the :class:`EventBus` that delivers to this sink; the default
        keeps it as :attr:`bus`, for failures met outside :meth:`handle`."""
        self.bus = bus


class EventBus:
    """Delivers events to every sink; one failing sink never affects the others."""

    def __init__(self, sinks: list[MetricsSink] | None = None) -> None:
        self.sinks: list[MetricsSink] = list(sinks or [])
        self._reported: set[tuple[str, str]] = set()
        #: failures per sink name, for ``/health`` and tests
        self.failures: dict[str, int] = {}
        #: events per sink name that a sink dropped instead of recording
        self.dropped: dict[str, int] = {}
        self._lock = threading.Lock()  # sinks report from their own threads
        for sink in self.sinks:
            sink.attach(self)

    def report_failure(self, sink: MetricsSink, what: str, error: BaseException) -> None:
        """``sink`` failed at ``what`` (e.g. "writing") outside :meth:`MetricsSink.handle`.

        Thread-safe. Counted in :attr:`failures`; logged once (without the traceback of
        an ``OSError``, whose message says it all) until :meth:`report_recovered`.
        """
        key = (sink.name, what)
        with self._lock:
            self.failures[sink.name] = self.failures.get(sink.name, 0) + 1
            first = key not in self._reported
            self._reported.add(key)
        if first:
            log.error("metrics sink %r failed %s: %s; its events are dropped until it "
                      "recovers", sink.name, what, error,
                      exc_info=None if isinstance(error, OSError) else error)

    def report_dropped(self, sink: MetricsSink, count: int = 1) -> None:
        """``sink`` dropped ``count`` events (a full queue, a failed writer); thread-safe."""
        with self._lock:
            self.dropped[sink.name] = self.dropped.get(sink.name, 0) + count

    def report_recovered(self, sink: MetricsSink, what: str) -> None:
        """``sink`` works again at ``what``; a later failure is logged again."""
        with self._lock:
            was_failing = (sink.name, what) in self._reported
            self._reported.discard((sink.name, what))
        if was_failing:
            log.warning("metrics sink %r recovered %s", sink.name, what)

    def status(self) -> dict[str, dict[str, int]]:
        """Per sink name: its ``failures`` and ``dropped`` events (``/health`` shows it)."""
        with self._lock:
            return {s.name: {"failures": self.failures.get(s.name, 0),
                             "dropped": self.dropped.get(s.name, 0)} for s in self.sinks}

    def emit(self, event: MetricEvent) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception:
                with self._lock:
                    self.failures[sink.name] = self.failures.get(sink.name, 0) + 1
                key = (sink.name, type(event).__name__)
                if key not in self._reported:
                    self._reported.add(key)
                    log.exception("metrics sink %r failed on %s", sink.name, key[1])

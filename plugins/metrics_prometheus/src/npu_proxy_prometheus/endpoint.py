"""``GET /metrics``: the Prometheus exposition of one app's :class:`PrometheusSink`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from npu_proxy.api import ApiDialect
from npu_proxy.context import ServerContext
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from .sink import PrometheusSink


def sink_of(ctx: ServerContext) -> PrometheusSink:
    """The app's Prometheus sink (registered by the same plugin, so it is always there)."""
    for sink in ctx.bus.sinks:
        if isinstance(sink, PrometheusSink):
            return sink
    raise RuntimeError(
        "the /metrics endpoint needs the prometheus metrics sink, which is not registered"
    )


class MetricsApi(ApiDialect):
    """Serves ``GET /metrics``; errors under ``/metrics`` are ``{"error": message}``
    (the default of :meth:`ApiDialect.error_response`).

    ``router(ctx)`` binds the app's sink to ``ctx`` (known models and devices bound the
    label values) and serves that sink's registry, never the process-global one.
    Requests to ``/metrics`` are themselves counted under the one endpoint label
    ``/metrics``.
    """

    name = "prometheus"
    prefixes = ("/metrics",)

    def router(self, ctx: ServerContext) -> APIRouter:
        sink = sink_of(ctx)
        sink.labels.bind(ctx)
        sink.show_devices()
        router = APIRouter()

        @router.get("/metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            # Prometheus asks for OpenMetrics when it can; other scrapers get text 0.0.4.
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encoder(sink.registry), media_type=content_type)

        return router

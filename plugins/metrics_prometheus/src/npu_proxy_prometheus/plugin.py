"""Entry point ``prometheus`` (group ``npu_proxy.metrics``).

Registers, per app, one :class:`PrometheusSink` and the :class:`MetricsApi` that serves
it at ``/metrics``; the API finds its sink among the app's sinks when it builds its
routes, so nothing is shared between apps.
"""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.api import ApiDialect
from npu_proxy.engine.events import MetricsSink
from npu_proxy.hookspecs import hookimpl

from .endpoint import MetricsApi
from .sink import PrometheusSink


@hookimpl
def npu_proxy_register_metrics_sinks(register: Callable[[MetricsSink], None]) -> None:
    register(PrometheusSink())


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None]) -> None:
    register(MetricsApi())

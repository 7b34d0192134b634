"""npu-proxy-prometheus: engine events as Prometheus metrics, served at ``GET /metrics``.

Each app gets its own :class:`PrometheusSink` with its own ``CollectorRegistry``, so
several servers in one process never share or clash over metrics.
"""

from .endpoint import MetricsApi
from .labels import OTHER, LabelBounds
from .sink import PrometheusSink

__all__ = ["OTHER", "LabelBounds", "MetricsApi", "PrometheusSink"]

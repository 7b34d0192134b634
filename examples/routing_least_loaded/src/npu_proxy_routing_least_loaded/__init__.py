"""npu-proxy-routing-least-loaded: an example third-party routing policy.

Install it next to npu-proxy and start the server with ``--routing least_loaded``
(or ``NPU_PROXY_ROUTING=least_loaded``).
"""

from .policy import LeastLoadedPolicy, LeastLoadedReason

__all__ = ["LeastLoadedPolicy", "LeastLoadedReason"]

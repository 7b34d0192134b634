"""The built-in plugin: the default routing policy and the ``/health`` endpoints.

Loaded through the same hooks as third-party plugins (see ``BUILTIN_PLUGINS``).
"""

from __future__ import annotations

from collections.abc import Callable

from .api import ApiDialect
from .engine.routing import RoutingPolicy, TokenThresholdPolicy, TokenThresholdSettings
from .health import HealthApi
from .hookspecs import hookimpl
from .settings import load_plugin_settings


@hookimpl
def npu_proxy_register_routing_policies(register: Callable[[RoutingPolicy], None]) -> None:
    # Read here, at composition: an invalid NPU_PROXY_TOKEN_LIMIT stops startup naming it.
    register(TokenThresholdPolicy(load_plugin_settings(TokenThresholdSettings)))


@hookimpl
def npu_proxy_register_api(register: Callable[[ApiDialect], None]) -> None:
    register(HealthApi())

"""Entry point ``least_loaded`` (group ``npu_proxy.routing``): registers the policy."""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.engine.routing import RoutingPolicy
from npu_proxy.hookspecs import hookimpl

from .policy import LeastLoadedPolicy


@hookimpl
def npu_proxy_register_routing_policies(register: Callable[[RoutingPolicy], None]) -> None:
    register(LeastLoadedPolicy())

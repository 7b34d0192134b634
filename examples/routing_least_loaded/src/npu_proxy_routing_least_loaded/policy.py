"""The ``least_loaded`` policy: each request goes to the usable device with the shortest queue.

A device's load is ``(queue_depth + in_flight) / max_parallel``: the requests ahead of
this one per slot, so a CPU running four streams at once and an NPU running one are
compared fairly. Equal loads are broken by the order NPU, GPU, CPU (then any other
device by name), which favours the accelerator when nothing else distinguishes them.
"""

from __future__ import annotations

import enum
from fractions import Fraction

from npu_proxy.engine.routing import (
    DEVICE_PREFERENCE,
    DeviceState,
    RouteDecision,
    RouteReason,
    RoutingContext,
    RoutingPolicy,
    why_not,
)


class LeastLoadedReason(enum.StrEnum):
    """The machine-readable reasons this policy gives (``X-NPU-Proxy-Route-Reason``)."""

    #: the chosen device had strictly the lowest load of the usable devices
    LEAST_LOADED = "least_loaded"
    #: several devices shared the lowest load; the device order picked this one
    TIE = "least_loaded_tie"
    #: only one device could serve the request at all
    ONLY_DEVICE = RouteReason.ONLY_DEVICE.value
    #: every usable device's queue was full; the engine answers 503 with Retry-After
    ALL_QUEUES_FULL = RouteReason.QUEUE_FULL.value


def load_of(state: DeviceState) -> Fraction:
    """Requests queued or running on ``state``'s device per parallel slot (exact)."""
    return Fraction(state.queue_depth + state.in_flight, max(1, state.max_parallel))


def device_rank(device: str) -> tuple[int, str]:
    """Sort key for ties: NPU, GPU, CPU first, then other devices alphabetically."""
    if device in DEVICE_PREFERENCE:
        return DEVICE_PREFERENCE.index(device), ""
    return len(DEVICE_PREFERENCE), device


class LeastLoadedPolicy(RoutingPolicy):
    """Send each request to the usable device with the lowest load (see module docs).

    Contract: only devices for which :meth:`RoutingContext.usable` holds are chosen;
    a device whose queue is full is chosen only when every usable device is full (the
    engine then refuses the request with 503 and Retry-After); with no usable device
    the decision is ``device=None`` and the reason says why the preferred device could
    not serve. The result depends on the context alone, so equal contexts give equal
    decisions.
    """

    name = "least_loaded"
    description = "each request to the device with the shortest queue per slot"

    def choose(self, ctx: RoutingContext) -> RouteDecision:
        usable = [state for device, state in ctx.devices.items() if ctx.usable(device)]
        if not usable:
            return RouteDecision(None, why_not(ctx, ctx.preferred_device))
        if len(usable) == 1:
            only = usable[0]
            reason = (
                LeastLoadedReason.ALL_QUEUES_FULL if only.queue_full
                else LeastLoadedReason.ONLY_DEVICE
            )
            return RouteDecision(only.device, reason)
        open_devices = [s for s in usable if not s.queue_full]
        if not open_devices:
            best = min(usable, key=lambda s: (load_of(s), device_rank(s.device)))
            return RouteDecision(best.device, LeastLoadedReason.ALL_QUEUES_FULL)
        lowest = min(load_of(s) for s in open_devices)
        tied = sorted(
            (s for s in open_devices if load_of(s) == lowest),
            key=lambda s: device_rank(s.device),
        )
        reason = LeastLoadedReason.TIE if len(tied) > 1 else LeastLoadedReason.LEAST_LOADED
        return RouteDecision(tied[0].device, reason)

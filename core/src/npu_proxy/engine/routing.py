"""Routing: the policy contract and the built-in ``token_threshold`` policy.

A policy is a pure function of a :class:`RoutingContext`: it sees every device's state
and the request's token count, and names one device with a machine-readable reason.
A policy's own knobs are its own settings (``TokenThresholdSettings`` for the built-in
one), read from the environment when its plugin registers it, not context fields.
The engine calls it again, with the failed device excluded, when the chosen device's
queue is full or the model fails to load there; the reasons of those exclusions are in
:attr:`RoutingContext.excluded`.
"""

from __future__ import annotations

import abc
import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import Field

from ..settings import PluginSettings
from .types import ModelInfo

#: Fallback order when no fallback device is configured.
DEVICE_PREFERENCE = ("NPU", "GPU", "CPU")


class RouteReason(enum.StrEnum):
    """The core's machine-readable route reasons (``X-NPU-Proxy-Route-Reason``).

    The values are wire values (headers, metrics labels) and never change. A policy
    may give reasons of its own (any short string); the engine's exclusions are these.
    """

    PREFERRED = "preferred_device"
    OVER_TOKEN_LIMIT = "token_limit_exceeded"
    PREFERRED_ABSENT = "preferred_device_absent"
    OVER_DEVICE_PROMPT_LEN = "device_prompt_limit_exceeded"
    QUEUE_FULL = "queue_full"
    LOAD_FAILED = "load_failed"
    UNSUPPORTED = "model_unsupported_on_device"
    ONLY_DEVICE = "only_available_device"
    PREFIX_AFFINITY = "prefix_affinity"
    #: the device chosen first failed before producing anything (a remote engine that
    #: refused the connection, answered 5xx or 429, or timed out), so another one serves
    FAILOVER = "failover"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device as the policy sees it at the moment of the decision."""

    device: str
    present: bool
    supports_model: bool
    queue_depth: int
    queue_limit: int
    in_flight: int
    max_parallel: int
    #: prompt tokens the device accepts for this model (None: up to the context)
    prompt_limit: int | None = None
    model_loaded: bool = False
    #: leading tokens of this prompt the device has read for this model and may still
    #: hold in its prefix cache (whole blocks; 0: none, or the device keeps no cache)
    prefix_tokens: int = 0
    #: a remote engine (an upstream replica), tried after every local device
    remote: bool = False

    @property
    def queue_full(self) -> bool:
        return self.queue_depth >= self.queue_limit and self.in_flight >= self.max_parallel


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Everything a policy may use. ``excluded`` maps devices already ruled out to why.

    ``prefix`` fingerprints the prompt's leading blocks
    (:func:`~npu_proxy.engine.prefix.fingerprint`; empty when the backend cannot tell);
    each device's :attr:`DeviceState.prefix_tokens` says how much of it that device read.
    """

    model: ModelInfo
    token_count: int
    preferred_device: str
    fallback_device: str | None
    devices: Mapping[str, DeviceState]
    excluded: Mapping[str, RouteReason] = field(default_factory=dict)
    #: a stable key of the conversation (its leading messages), so that one
    #: conversation keeps going to the replica that caches its prefix; "" for none
    affinity_key: str = ""
    prefix: tuple[int, ...] = ()

    def prefix_holder(self) -> str | None:
        """The device that has read the most of this prompt's prefix (None: no device;
        on a tie, the first in name order)."""
        held = [(-s.prefix_tokens, d) for d, s in self.devices.items() if s.prefix_tokens > 0]
        return min(held)[1] if held else None

    def usable(self, device: str) -> bool:
        """Present, able to load the model, not excluded, and the prompt fits."""
        state = self.devices.get(device)
        if state is None or not state.present or not state.supports_model:
            return False
        if device in self.excluded:
            return False
        return state.prompt_limit is None or self.token_count <= state.prompt_limit


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen device and why. ``device=None`` means nothing can serve the request.

    ``reason`` is a :class:`RouteReason` or a policy's own short, fixed string.
    """

    device: str | None
    reason: RouteReason | str


class RoutingPolicy(abc.ABC):
    """A routing policy. Register instances through ``npu_proxy_register_routing_policies``.

    ``name`` is what ``--routing NAME`` selects. ``choose`` must be fast and must not
    block: it runs on the event loop for every request.
    """

    name: str
    description: str = ""

    @abc.abstractmethod
    def choose(self, ctx: RoutingContext) -> RouteDecision:
        """Pick a usable device (see :meth:`RoutingContext.usable`) or return device None."""


def why_not(ctx: RoutingContext, device: str) -> RouteReason:
    """The reason ``device`` is not usable, as a :class:`RouteReason` value."""
    if device in ctx.excluded:
        return ctx.excluded[device]
    state = ctx.devices.get(device)
    if state is None or not state.present:
        return RouteReason.PREFERRED_ABSENT
    if not state.supports_model:
        return RouteReason.UNSUPPORTED
    return RouteReason.OVER_DEVICE_PROMPT_LEN


def fallback_order(ctx: RoutingContext) -> list[str]:
    """The configured fallback device first, then NPU, GPU, CPU, then any other local
    device by name, then the remote replicas in :func:`replica_order` for the
    conversation's affinity key."""
    order: list[str] = []
    if ctx.fallback_device:
        order.append(ctx.fallback_device)
    order += [d for d in DEVICE_PREFERENCE if d not in order]
    rest = [d for d in ctx.devices if d not in order]
    order += sorted(d for d in rest if not ctx.devices[d].remote)
    order += replica_order(ctx.affinity_key or ctx.model.name,
                           [d for d in rest if ctx.devices[d].remote])
    return order


def replica_order(key: str, devices: Iterable[str]) -> list[str]:
    """``devices`` ordered for ``key`` by rendezvous (highest random weight) hashing.

    The same key always puts the same device first, and a device that leaves or joins
    moves only the keys it wins: a conversation keeps its replica (and that replica's
    prefix cache) while the others come and go. Deterministic across processes.
    """

    def weight(device: str) -> bytes:
        return hashlib.blake2b(f"{device}\0{key}".encode(), digest_size=8).digest()

    return sorted(devices, key=weight, reverse=True)


class TokenThresholdSettings(PluginSettings):
    """The ``token_threshold`` policy's own variable (read with ``load_plugin_settings``)."""

    token_limit: int = Field(
        1800, ge=1, description="Prompts above this many tokens go to the fallback device "
        "(the token_threshold routing policy)."
    )


class TokenThresholdPolicy(RoutingPolicy):
    """Short prompts go to the preferred device, long ones (and refusals) to the fallback;
    a conversation stays where its prefix is cached.

    First, prefix affinity: when another device than the preferred one has read more
    of this prompt's prefix (:meth:`RoutingContext.prefix_holder`), it takes the prompt
    if it is usable and its queue has room (reason ``prefix_affinity``). Otherwise: up
    to ``settings.token_limit`` prompt tokens (``NPU_PROXY_TOKEN_LIMIT``), the preferred
    device, when usable; else the first
    usable of the fallback order; the reason names why the device first in line (the
    prefix's holder, or the preferred device) was passed over: over the token limit,
    absent, over its compiled prompt length, queue full, load failed.
    """

    name = "token_threshold"
    description = "prompts up to NPU_PROXY_TOKEN_LIMIT tokens to the preferred device"

    def __init__(self, settings: TokenThresholdSettings | None = None) -> None:
        self.settings = settings or TokenThresholdSettings()

    def choose(self, ctx: RoutingContext) -> RouteDecision:
        preferred = ctx.preferred_device
        over_limit = ctx.token_count > self.settings.token_limit
        holder = ctx.prefix_holder()
        held_reason: RouteReason | None = None
        if holder is not None and holder != preferred and ctx.devices[holder].prefix_tokens > (
                ctx.devices[preferred].prefix_tokens if preferred in ctx.devices else 0):
            if ctx.usable(holder) and not ctx.devices[holder].queue_full:
                return RouteDecision(holder, RouteReason.PREFIX_AFFINITY)
            held_reason = (RouteReason.QUEUE_FULL if ctx.usable(holder)
                           else why_not(ctx, holder))
        if not over_limit and ctx.usable(preferred):
            return RouteDecision(preferred, held_reason or RouteReason.PREFERRED)
        reason = held_reason or (
            RouteReason.OVER_TOKEN_LIMIT if over_limit else why_not(ctx, preferred))
        for device in fallback_order(ctx):
            if device != preferred and ctx.usable(device):
                return RouteDecision(device, reason)
        # Over the token limit but nothing else can take it: the preferred device will.
        if over_limit and ctx.usable(preferred):
            return RouteDecision(preferred, RouteReason.ONLY_DEVICE)
        return RouteDecision(None, reason)

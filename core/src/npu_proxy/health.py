"""``/health`` and ``/health/devices``: what is running, truthfully, in milliseconds.

Both read in-memory state only (no device calls, no disk), so they answer while a
model compiles or several streams run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from .api import ApiDialect
from .context import ServerContext


def health_report(ctx: ServerContext) -> dict[str, Any]:
    """Overall status, each device with its queue, and each model with its state."""
    engine = ctx.engine
    models = [
        {
            "name": r.info.name,
            "device": r.device,
            "state": r.state,
            "error": r.error or None,
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "loading_seconds": (
                round(time.monotonic() - r.loading_since, 1)
                if r.state == "loading" and r.loading_since is not None
                else None
            ),
        }
        for r in engine.lifecycle.residents()
    ]
    devices = {}
    for device, queue in engine.queues.items():
        info = engine.devices.get(device)
        failure = engine.last_failure.get(device)
        devices[device] = {
            "present": bool(info and info.present),
            "state": "probing" if info is None else ("available" if info.present else "absent"),
            "error": (info.error or None) if info else None,
            "queue_depth": queue.waiting,
            "in_flight": queue.in_flight,
            "max_parallel": queue.slots,
            "last_failure": (
                {"at": failure[0].isoformat(), "error": failure[1]} if failure else None
            ),
        }
    if engine.probing:
        status = "starting"
    elif any(m["state"] == "loading" for m in models):
        status = "loading"
    elif not any(d["present"] for d in devices.values()):
        status = "degraded"
    else:
        status = "ok"
    return {
        "status": status,
        "version": ctx.version,
        "uptime_seconds": round(time.time() - ctx.started_at, 3),
        "real_inference": ctx.settings.real_inference,
        "routing": engine.policy.name,
        "devices": devices,
        "models": models,
        # failures and dropped events per metrics sink (a full disk under a writer)
        "metrics_sinks": ctx.bus.status(),
    }


class HealthApi(ApiDialect):
    """The core's own endpoints; errors under them use the default plain
    ``{"error": ...}`` body of :meth:`ApiDialect.error_response`."""

    name = "health"
    prefixes = ("/health",)

    def router(self, ctx: ServerContext) -> APIRouter:
        router = APIRouter()

        @router.get("/health")
        async def health() -> dict[str, Any]:
            return health_report(ctx)

        @router.get("/health/devices")
        async def devices() -> dict[str, Any]:
            engine = ctx.engine
            return {
                "probing": engine.probing,
                "devices": [
                    {
                        **asdict(info),
                        "backend": engine.backends[name].name,
                        "queue_depth": engine.queues[name].waiting,
                        "in_flight": engine.queues[name].in_flight,
                    }
                    for name, info in sorted(engine.devices.items())
                ],
            }

        return router

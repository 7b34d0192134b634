"""Model residency: load on demand, keep-alive expiry, explicit unload, swaps on small devices.

One :class:`Residency` per (device, model). Concurrent requests for a model that is
loading wait for that one load. A device with ``max_loaded_models`` (the NPU: one LLM)
unloads its idle models before loading another, so changing the model needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..settings import bounded_duration
from .backend import Backend, LoadedModel
from .errors import EngineError, ModelLoadError
from .events import EventBus, ModelLoaded, ModelUnloaded
from .types import ModelInfo

log = logging.getLogger(__name__)

#: What Ollama reports as the expiry of a model kept forever.
FOREVER = datetime(2318, 1, 1, tzinfo=UTC)


class ResidencyState(enum.StrEnum):
    """Where a model stands on a device; the values are shown in /health and /api/ps."""

    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(eq=False)
class Residency:
    """A model on a device: loading, loaded or failed (with ``error``)."""

    info: ModelInfo
    device: str
    state: ResidencyState = ResidencyState.LOADING
    loaded: LoadedModel | None = None
    error: str = ""
    users: int = 0
    load_duration: int = 0  # ns
    expires_at: datetime | None = None
    last_used: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    unload_pending: bool = False  # unload as soon as the last user is done
    loading_since: float | None = None  # monotonic time the current load began

    @property
    def is_loaded(self) -> bool:
        # A method, not an inline comparison: the state changes across awaits.
        return self.state is ResidencyState.LOADED

    @property
    def size(self) -> int:
        return self.loaded.size if self.loaded is not None else 0


class ModelLifecycle:
    """Owns every :class:`Residency`; the engine's only way to get a loaded model."""

    def __init__(
        self,
        backends: dict[str, Backend],
        bus: EventBus,
        keep_alive: float,
        on_unload: Callable[[str, str], None] | None = None,
    ) -> None:
        self._backends = backends
        self._bus = bus
        #: called with (model, device) once a model has left a device
        self._on_unload = on_unload
        self._default_keep_alive = keep_alive
        self._residents: dict[tuple[str, str], Residency] = {}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    def residents(self) -> list[Residency]:
        """Every model that is loaded, loading or failed, for /health and /api/ps."""
        return list(self._residents.values())

    def find(self, name: str) -> list[Residency]:
        return [r for (_, model), r in self._residents.items() if model == name]

    async def acquire(self, device: str, info: ModelInfo) -> tuple[LoadedModel, int]:
        """The loaded model and the nanoseconds this call spent loading it (0 if resident).

        Raises :class:`ModelLoadError` if loading fails. The caller must :meth:`release`.
        """
        key = (device, info.name)
        start = time.perf_counter_ns()
        while True:
            res = self._residents.get(key)
            if res is None or res.state is ResidencyState.FAILED:
                res = Residency(info=info, device=device)
                self._residents[key] = res
                res.users += 1
                await self._load(res)
                return self._ready(res), time.perf_counter_ns() - start
            res.users += 1
            if res.is_loaded:
                return self._ready(res), 0
            try:
                await res.ready.wait()
            except asyncio.CancelledError:
                res.users -= 1
                raise
            if res.is_loaded:
                return self._ready(res), time.perf_counter_ns() - start
            res.users -= 1
            # The load we waited for failed: share its error. A load that was withdrawn
            # (its starter was cancelled) is gone from the table: loop and load it anew.
            if self._residents.get(key) is res:
                raise ModelLoadError(res.error)

    def _ready(self, res: Residency) -> LoadedModel:
        assert res.loaded is not None
        if res.timer is not None:
            res.timer.cancel()
            res.timer = None
        res.last_used = time.monotonic()
        if res.expires_at is None:  # in use: at least the default keep-alive from now
            res.expires_at = datetime.now(UTC) + timedelta(seconds=max(0, self._default_keep_alive))
        return res.loaded

    async def _load(self, res: Residency) -> None:
        backend = self._backends[res.device]
        try:
            await self._make_room(backend, res)
            log.info("loading %s on %s (a first load compiles and may take minutes; "
                     "/health shows its progress)", res.info.name, res.device)
            res.loading_since = time.monotonic()
            started = time.perf_counter_ns()
            res.loaded = await backend.load(res.info)
            res.load_duration = time.perf_counter_ns() - started
            res.state = ResidencyState.LOADED
            self._bus.emit(
                ModelLoaded(res.info.name, res.device, res.load_duration / 1e9, res.size)
            )
            log.info(
                "loaded %s on %s in %.1f s", res.info.name, res.device, res.load_duration / 1e9
            )
        except BaseException as exc:
            res.users -= 1
            res.state = ResidencyState.FAILED
            res.error = (
                exc.message
                if isinstance(exc, EngineError)
                else f"could not load {res.info.name} on {res.device}"
            )
            if not isinstance(exc, EngineError | asyncio.CancelledError):
                log.exception("loading %s on %s failed", res.info.name, res.device)
            if isinstance(exc, asyncio.CancelledError):
                self._residents.pop((res.device, res.info.name), None)
                raise
            raise ModelLoadError(res.error) from None
        finally:
            res.ready.set()
            async with self._changed:
                self._changed.notify_all()

    async def _make_room(self, backend: Backend, res: Residency) -> None:
        limit = backend.max_loaded_models
        if limit is None:
            return
        while True:
            others = [
                r for (dev, _), r in self._residents.items() if dev == res.device and r is not res
                and r.state is not ResidencyState.FAILED
            ]
            if len(others) < limit:
                return
            idle = [r for r in others if r.users == 0 and r.is_loaded]
            if idle:
                victim = min(idle, key=lambda r: r.last_used)
                await self._unload(victim, "swap")
                continue
            async with self._changed:
                await self._changed.wait()

    def release(self, device: str, name: str, keep_alive: float | None) -> None:
        """One user is done. Schedules the unload ``keep_alive`` seconds from now.

        ``None`` (or NaN) uses the default; negative keeps it forever, and so does a
        value beyond :data:`~npu_proxy.settings.MAX_DURATION`; ``0`` unloads once idle.
        Never raises: the user is released whatever ``keep_alive`` holds.
        """
        res = self._residents.get((device, name))
        if res is None:
            return
        res.users = max(0, res.users - 1)
        res.last_used = time.monotonic()
        if keep_alive is None or math.isnan(keep_alive):
            keep_alive = self._default_keep_alive
        seconds = bounded_duration(keep_alive)
        if res.unload_pending:
            seconds, res.unload_pending = 0, False
        self._schedule(res, seconds)
        self._notify()

    def _schedule(self, res: Residency, seconds: float) -> None:
        if res.timer is not None:
            res.timer.cancel()
            res.timer = None
        if seconds < 0:
            res.expires_at = FOREVER
            return
        res.expires_at = datetime.now(UTC) + timedelta(seconds=seconds)
        if res.users > 0:
            return
        loop = asyncio.get_running_loop()
        if seconds == 0:
            self._spawn(self._unload(res, "keep_alive"))
        else:
            res.timer = loop.call_later(
                seconds, lambda: self._spawn(self._unload(res, "keep_alive"))
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify())

    async def _unload(self, res: Residency, reason: str) -> None:
        if res.users > 0 or self._residents.get((res.device, res.info.name)) is not res:
            return
        del self._residents[(res.device, res.info.name)]
        if res.timer is not None:
            res.timer.cancel()
        if res.loaded is not None:
            try:
                await res.loaded.unload()
            except Exception:
                log.exception("unloading %s on %s failed", res.info.name, res.device)
        if self._on_unload is not None:
            self._on_unload(res.info.name, res.device)
        self._bus.emit(ModelUnloaded(res.info.name, res.device, reason))
        log.info("unloaded %s from %s (%s)", res.info.name, res.device, reason)
        async with self._changed:
            self._changed.notify_all()

    async def unload(self, name: str, reason: str = "explicit") -> bool:
        """Unload ``name`` from every device once idle; True if it was resident."""
        found = self.find(name)
        for res in found:
            if res.users == 0:
                await self._unload(res, reason)
            else:
                res.unload_pending = True
                res.expires_at = datetime.now(UTC)
        return bool(found)

    async def close(self) -> None:
        for res in list(self._residents.values()):
            res.users = 0
            await self._unload(res, "shutdown")
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

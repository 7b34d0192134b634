"""Test support for npu-proxy and its plugin authors.

- :func:`make_host` / :func:`make_app`: an app with chosen plugins plus inline ones;
  :func:`served_paths`: every route it serves; :func:`assert_routes_need_key`.
- :class:`RecordingSink`: a metrics sink that keeps every event, for assertions.
- :class:`LiveServer`: the app served by a real uvicorn on a free loopback port, so the
  official ``ollama``, ``openai`` and ``anthropic`` clients can talk to it;
  :func:`wait_healthy` for a server started as a process.
- :class:`BackendContract` and :class:`RoutingPolicyContract`: subclass them in a
  plugin's tests to prove the plugin keeps the core's contracts.

Nothing here imports or needs a plugin: the core's own tests run with only the core
installed, composing their apps from inline plugins.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from .app import create_app
from .engine.backend import Backend, LoadedModel
from .engine.errors import CapabilityError, PromptTooLongError
from .engine.events import MetricsSink
from .engine.routing import DeviceState, RouteReason, RoutingContext, RoutingPolicy
from .engine.types import (
    DeviceInfo,
    Done,
    FinishReason,
    GenerationRequest,
    Message,
    ModelInfo,
    SamplingOptions,
    TextDelta,
)
from .hookspecs import hookimpl
from .plugins import PluginHost
from .settings import Settings

E = TypeVar("E")
T = TypeVar("T")


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for tests: simulated mode, a private model store, no warm-up."""
    values: dict[str, Any] = {
        "real_inference": False,
        "model_path": tmp_path / "models",
        "host": "127.0.0.1",
        "warmup": False,
    }
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def inline_plugin(**hooks: Any) -> Any:
    """An object whose attributes are hook implementations, e.g.
    ``inline_plugin(npu_proxy_register_backends=lambda register: register(b))``."""
    plugin = SimpleNamespace()
    for name, function in hooks.items():
        setattr(plugin, name, hookimpl(function))
    return plugin


def backend_plugin(*backends: Backend) -> Any:
    """An inline plugin that registers ``backends`` (e.g. mock NPU and CPU devices)."""

    def register_backends(register: Any) -> None:
        for backend in backends:
            register(backend)

    return inline_plugin(npu_proxy_register_backends=register_backends)


def make_host(
    plugins: list[str] | None = None, inline: Mapping[str, Any] | None = None
) -> PluginHost:
    """Built-ins, the named installed plugins (all when None), and ``inline`` objects."""
    host = PluginHost.load(plugins)
    for name, plugin in (inline or {}).items():
        host.add_inline(name, plugin)
    return host


def make_app(
    settings: Settings,
    plugins: list[str] | None = None,
    inline: Mapping[str, Any] | None = None,
) -> Any:
    """``create_app`` with :func:`make_host`'s plugins."""
    return create_app(settings, make_host(plugins, inline))


def served_paths(app: Any) -> list[tuple[str, str]]:
    """Every (method, concrete path) ``app`` serves, path parameters filled in; for
    tests that probe every route (that each needs the API key, for one)."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.165 nests them
        if included is not None:
            found += served_paths(included)
            continue
        path = getattr(route, "path", None)
        if path is None:
            continue
        concrete = path.replace("{", "").replace("}", "").replace(":path", "")
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            found.append((method, concrete))
    return found


def assert_routes_need_key(server: LiveServer, key: str) -> list[tuple[str, str]]:
    """Assert that every route ``server`` serves but ``/health`` refuses a request
    without the API key (401, the key never echoed); returns the routes it tried."""
    import httpx

    routes = served_paths(server.app)
    for method, path in routes:
        response = httpx.request(method, server.url + path, content=b"{}")
        if path == "/health":
            assert response.status_code == 200
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert key not in response.text
    return routes


class RecordingSink(MetricsSink):
    """A metrics sink that keeps every event it is handed (``events``), in order."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[Any] = []

    def handle(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The recorded events of type ``kind``."""
        return [event for event in self.events if isinstance(event, kind)]

    def plugin(self) -> Any:
        """An inline plugin that registers this sink."""
        return inline_plugin(npu_proxy_register_metrics_sinks=lambda register: register(self))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(process: subprocess.Popen[str], url: str, timeout: float = 120) -> None:
    """Poll ``url``'s ``/health`` until it says ok, for a server started as ``process``
    (``npu-proxy ...``); fails with the process's stderr if it exits first. The bound
    only stops a hung test."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1])
        assert time.monotonic() < deadline, "the server did not become ready"
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(url + "/health", timeout=5).json()["status"] == "ok":
                return
        time.sleep(0.1)


class LiveServer:
    """Serve ``app`` with uvicorn in a background thread; use as a context manager.

    ``url`` is ``http://127.0.0.1:PORT``; ``ctx`` the app's ServerContext.
    """

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run ``coro`` on the server's event loop (to inspect engine state safely)."""
        loop = self.ctx.engine.loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def health_while(self, work: Callable[[], T]) -> tuple[T, list[float]]:
        """Run ``work`` in a thread and poll ``/health`` until it ends: ``work``'s result
        and each poll's seconds (at least one poll), to show the event loop stays free."""
        import httpx

        results: list[T] = []
        thread = threading.Thread(target=lambda: results.append(work()))
        thread.start()
        latencies: list[float] = []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while thread.is_alive() or not latencies:
                started = time.perf_counter()
                client.get("/health").raise_for_status()
                latencies.append(time.perf_counter() - started)
        thread.join()
        if not results:
            raise RuntimeError("the work failed (its thread printed why)")
        return results[0], latencies


# --- contract tests ------------------------------------------------------------------


class BackendContract:
    """Contract tests for a backend plugin. Subclass and provide two fixtures:

    ``backend`` (a :class:`Backend` whose device is present) and ``model`` (a
    :class:`ModelInfo` with the completion capability that it supports).
    """

    @staticmethod
    def request(text: str = "Say hello.", **options: Any) -> GenerationRequest:
        return GenerationRequest(
            model="contract",
            messages=(Message(role="user", content=text),),
            options=SamplingOptions(temperature=0.0, **options),
        )

    @pytest.fixture
    async def loaded(self, backend: Backend, model: ModelInfo) -> AsyncIterator[LoadedModel]:
        loaded = await backend.load(model)
        try:
            yield loaded
        finally:
            await loaded.unload()

    async def test_probe_reports_its_device(self, backend: Backend) -> None:
        info = await backend.probe()
        assert isinstance(info, DeviceInfo)
        assert info.device == backend.device
        assert info.present, info.error

    async def test_supports_and_counts(self, backend: Backend, model: ModelInfo) -> None:
        assert backend.supports(model)
        short = await backend.count_tokens(model, self.request("Hi"))
        long = await backend.count_tokens(model, self.request("Hi " * 50))
        assert 0 < short < long

    async def test_renders_tokenizes_and_reads_back_or_says_it_cannot(
        self, backend: Backend, model: ModelInfo
    ) -> None:
        """Ollama's ``context`` needs all three: the rendered prompt's ids read back as
        the same text. A backend without them refuses each with a CapabilityError."""
        request = self.request("Say hello.")
        try:
            rendered = await backend.render(model, request)
        except CapabilityError:
            with pytest.raises(CapabilityError):
                await backend.tokenize(model, "Say hello.")
            with pytest.raises(CapabilityError):
                await backend.detokenize(model, [1])
            return
        assert "Say hello." in rendered
        ids = await backend.tokenize(model, rendered)
        assert ids and all(isinstance(i, int) and i >= 0 for i in ids)
        assert await backend.detokenize(model, ids) == rendered

    async def test_stream_ends_with_one_done_and_true_counts(
        self, backend: Backend, model: ModelInfo, loaded: LoadedModel
    ) -> None:
        request = self.request(max_tokens=8)
        events = [e async for e in loaded.generate(request)]
        assert isinstance(events[-1], Done)
        assert sum(isinstance(e, Done) for e in events) == 1
        done = events[-1]
        assert done.usage.prompt_tokens == await backend.count_tokens(model, request)
        assert 0 < done.usage.completion_tokens <= 8
        assert done.usage.prefill_duration > 0
        assert done.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)

    async def test_max_tokens_gives_length(self, loaded: LoadedModel) -> None:
        events = [e async for e in loaded.generate(self.request("Count to fifty.", max_tokens=2))]
        done = events[-1]
        assert isinstance(done, Done)
        assert done.finish_reason == FinishReason.LENGTH
        assert done.usage.completion_tokens == 2

    async def test_closing_the_stream_stops_it(self, loaded: LoadedModel) -> None:
        stream = loaded.generate(self.request("Tell me a long story.", max_tokens=64))
        pieces = 0
        async for event in stream:
            if isinstance(event, TextDelta):
                pieces += 1
                if pieces == 3:
                    break
        await stream.aclose()  # type: ignore[attr-defined]
        # The device is free again: a new generation runs to completion.
        events = [e async for e in loaded.generate(self.request(max_tokens=4))]
        assert isinstance(events[-1], Done)

    async def test_prompt_over_the_limit_is_refused(
        self, backend: Backend, model: ModelInfo, loaded: LoadedModel
    ) -> None:
        limit = backend.prompt_limit(model)
        if limit is None:
            pytest.skip("this backend has no compiled prompt limit")
        request = self.request("word " * (limit + 10))
        with pytest.raises(PromptTooLongError):
            async for _ in loaded.generate(request):
                pass


def routing_context(
    devices: Mapping[str, dict[str, Any]],
    *,
    token_count: int = 10,
    preferred: str = "NPU",
    fallback: str | None = None,
    excluded: Mapping[str, RouteReason] | None = None,
) -> RoutingContext:
    """A RoutingContext from short device descriptions, e.g. ``{"NPU": {"present": False}}``."""
    model = ModelInfo(name="m:latest", format="mock", family="m", capabilities=frozenset(),
                      context_length=8192)
    states = {}
    for name, spec in devices.items():
        states[name] = DeviceState(
            device=name,
            present=spec.get("present", True),
            supports_model=spec.get("supports_model", True),
            queue_depth=spec.get("queue_depth", 0),
            queue_limit=spec.get("queue_limit", 512),
            in_flight=spec.get("in_flight", 0),
            max_parallel=spec.get("max_parallel", 1),
            prompt_limit=spec.get("prompt_limit"),
            model_loaded=spec.get("model_loaded", False),
            prefix_tokens=spec.get("prefix_tokens", 0),
        )
    return RoutingContext(
        model=model,
        token_count=token_count,
        preferred_device=preferred,
        fallback_device=fallback,
        devices=states,
        excluded=dict(excluded or {}),
    )


class RoutingPolicyContract:
    """Contract tests for a routing policy. Subclass and provide a ``policy`` fixture."""

    def test_has_a_name(self, policy: RoutingPolicy) -> None:
        assert isinstance(policy.name, str) and policy.name

    def test_chooses_a_usable_device(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {}, "CPU": {}})
        decision = policy.choose(ctx)
        assert decision.device in ("NPU", "CPU")
        assert isinstance(decision.reason, str) and decision.reason

    def test_never_chooses_an_absent_device(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {"present": False}, "CPU": {}})
        assert policy.choose(ctx).device == "CPU"

    def test_never_chooses_an_excluded_device(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {}, "CPU": {}}, excluded={"NPU": RouteReason.QUEUE_FULL})
        assert policy.choose(ctx).device == "CPU"

    def test_respects_a_device_prompt_limit(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {"prompt_limit": 100}, "CPU": {}}, token_count=500)
        assert policy.choose(ctx).device == "CPU"

    def test_none_when_nothing_fits(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {"present": False}, "CPU": {"supports_model": False}})
        decision = policy.choose(ctx)
        assert decision.device is None
        assert decision.reason

    def test_is_deterministic(self, policy: RoutingPolicy) -> None:
        ctx = routing_context({"NPU": {}, "GPU": {}, "CPU": {}}, token_count=50)
        assert {policy.choose(ctx).device for _ in range(5)} == {policy.choose(ctx).device}


@contextlib.contextmanager
def live_app(settings: Settings, plugins: list[str] | None = None,
             inline: Mapping[str, Any] | None = None) -> Iterator[LiveServer]:
    """A :class:`LiveServer` around :func:`make_app` (for use in ``with`` blocks)."""
    with LiveServer(make_app(settings, plugins, inline)) as server:
        yield server

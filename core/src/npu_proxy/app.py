"""``create_app(settings, plugins)``: compose a server from the loaded plugins.

Each call builds its own plugin registrations, engine and model store; nothing is
shared between apps, so tests can create as many as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from . import __version__
from .api import ApiDialect, plain_error_response
from .context import ServerContext
from .engine.backend import Backend
from .engine.engine import Engine
from .engine.errors import EngineError, InvalidRequestError
from .engine.events import EventBus, MetricsSink
from .engine.formats import ModelFormat, ModelFormats
from .engine.routing import RoutingPolicy
from .engine.store import ModelStore
from .engine.types import ModelInfo
from .hub.pull import Puller
from .middleware import RequestContextMiddleware
from .plugins import PluginError, PluginHost
from .security import SecurityMiddleware, policy_options
from .settings import Settings
from .stopping import StopGuard
from .web import CLIENT_CLOSED, ClientDisconnected, HttpError

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The configuration cannot make a working server; the message says why."""


def _select_backends(settings: Settings, found: list[tuple[str, Backend]]) -> list[Backend]:
    """The backends for this mode (simulated or real), one per device."""
    wanted = [(p, b) for p, b in found if b.simulated == (not settings.real_inference)]
    by_device: dict[str, str] = {}
    for plugin, backend in wanted:
        if backend.device in by_device:
            raise StartupError(
                f"device {backend.device} is driven by two backends: plugin "
                f"{by_device[backend.device]!r} and plugin {plugin!r}; load only one of them"
            )
        by_device[backend.device] = plugin
    return [b for _, b in wanted]


def _select_policy(settings: Settings, found: list[tuple[str, RoutingPolicy]]) -> RoutingPolicy:
    for _, policy in found:
        if policy.name == settings.routing:
            return policy
    names = ", ".join(sorted(p.name for _, p in found)) or "none"
    raise StartupError(
        f"unknown routing policy {settings.routing!r} (NPU_PROXY_ROUTING); installed: {names}"
    )


def build_context(settings: Settings, host: PluginHost) -> ServerContext:
    """Collect every registered object and assemble the engine. Raises StartupError."""
    try:
        dialects = [d for _, d in host.collect("npu_proxy_register_api", ApiDialect, settings)]  # type: ignore[type-abstract]
        backends = host.collect("npu_proxy_register_backends", Backend, settings)  # type: ignore[type-abstract]
        models = host.collect("npu_proxy_register_models", ModelInfo, settings)
        formats = host.collect("npu_proxy_register_model_formats", ModelFormat, settings)  # type: ignore[type-abstract]
        policies = host.collect("npu_proxy_register_routing_policies", RoutingPolicy, settings)  # type: ignore[type-abstract]
        sinks = host.collect("npu_proxy_register_metrics_sinks", MetricsSink, settings)  # type: ignore[type-abstract]
    except PluginError as exc:
        raise StartupError(str(exc)) from None
    store = ModelStore(settings.model_path, formats=ModelFormats(f for _, f in formats),
                       blob_ttl=settings.blob_ttl)
    for plugin, model in models:
        try:
            store.register(model)
        except EngineError as exc:
            raise StartupError(f"plugin {plugin!r} registered a bad model: {exc}") from None
    bus = EventBus([s for _, s in sinks])
    engine = Engine(
        settings, store, _select_backends(settings, backends), _select_policy(settings, policies),
        bus,
    )
    try:
        puller = Puller(store)
    except ValueError as exc:  # two formats claim one pull alias
        raise StartupError(str(exc)) from None
    return ServerContext(settings, engine, store, bus, host, dialects, puller=puller)


def dialect_for(ctx: ServerContext, path: str) -> ApiDialect | None:
    """The dialect owning ``path`` (longest matching prefix), for rendering errors."""
    best: tuple[int, ApiDialect] | None = None
    for dialect in ctx.dialects:
        for prefix in dialect.prefixes:
            matches = path == prefix or path.startswith(prefix.rstrip("/") + "/")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), dialect)
    return best[1] if best else None


def error_response(ctx: ServerContext, path: str, error: EngineError) -> Response:
    """``error`` in the shape of the dialect that owns ``path`` (plain JSON otherwise)."""
    dialect = dialect_for(ctx, path)
    if dialect is None:
        return plain_error_response(error)
    return dialect.error_response(error)


async def _run_hook(ctx: ServerContext, hook: str) -> None:
    for plugin, result in ctx.plugins.call_each(hook, ctx=ctx):
        if inspect.isawaitable(result):
            try:
                await result
            except Exception:
                log.exception("plugin %r failed in %s", plugin, hook)


def create_app(
    settings: Settings | None = None,
    plugins: PluginHost | Iterable[str] | None = None,
) -> FastAPI:
    """A FastAPI app composed from ``plugins`` (a host, a list of names, or all installed).

    Raises :class:`StartupError` for an unusable configuration (unknown plugin or
    routing policy, two backends for one device, a duplicate name).
    """
    settings = settings or Settings()
    if not isinstance(plugins, PluginHost):
        try:
            plugins = PluginHost.load(None if plugins is None else list(plugins))
        except PluginError as exc:
            raise StartupError(str(exc)) from None
    ctx = build_context(settings, plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.store.ascan()
        ctx.engine.start()
        await _run_hook(ctx, "npu_proxy_startup")
        warmup = None
        if settings.warmup:
            warmup = asyncio.get_running_loop().create_task(_warm_up(ctx))
        try:
            yield
        finally:
            if warmup is not None:
                warmup.cancel()
            await _run_hook(ctx, "npu_proxy_shutdown")
            await ctx.engine.close()
            for sink in ctx.bus.sinks:
                try:
                    sink.close()
                except Exception:
                    log.exception("closing metrics sink %r failed", sink.name)

    app = FastAPI(
        title="npu-proxy",
        version=__version__,
        lifespan=lifespan,
        description="Ollama-, OpenAI- and Anthropic-compatible inference on Intel NPU/GPU/CPU",
    )
    app.state.ctx = ctx
    for dialect in ctx.dialects:
        app.include_router(dialect.router(ctx))
    from .web import complete_openapi

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail) if exc.status_code != 404 else f"{request.url.path} not found"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods (a HEAD route registered
            # beside a GET one answered "Allow: HEAD"); name every route's on this path.
            headers["Allow"] = ", ".join(sorted(allowed_methods(app.routes, request.scope)))
        error = HttpError(exc.status_code, message, headers=headers)
        return error_response(ctx, request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {loc} {first.get('msg', '')}".strip()
        return error_response(ctx, request.url.path, InvalidRequestError(message))

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> Response:
        return error_response(ctx, request.url.path, exc)

    @app.exception_handler(ClientDisconnected)
    async def disconnected(request: Request, exc: ClientDisconnected) -> Response:
        # Nobody is listening; the status is for the access log and the metrics.
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(ctx, request.url.path, EngineError("internal server error"))

    _add_network_safety(app, ctx)
    # a stop past its grace period answers what it cuts (503), never with a traceback
    app.add_middleware(StopGuard, render=lambda path, error: error_response(ctx, path, error))
    app.add_middleware(RequestContextMiddleware, bus=ctx.bus)
    return app


def _add_network_safety(app: FastAPI, ctx: ServerContext) -> None:
    """Security checks around CORS (see :class:`SecurityMiddleware`), inside the request id."""
    options = policy_options(ctx.settings)
    app.add_middleware(
        SecurityMiddleware,
        render=lambda path, status, message, code, headers: error_response(
            ctx, path, HttpError(status, message, code=code, headers=headers)),
        cors=lambda inner: CORSMiddleware(
            inner,
            allow_origin_regex=options["origins"],
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-NPU-Proxy-Device", "X-NPU-Proxy-Route-Reason",
                            "X-NPU-Proxy-Token-Count", "X-NPU-Proxy-Truncated"],
            allow_credentials=False,
        ),
        **options,
        uploads=tuple(p for d in ctx.dialects for p in d.uploads),
    )


async def _warm_up(ctx: ServerContext) -> None:
    """Load the default model and generate 16 tokens, then load the embedding model
    (``NPU_PROXY_EMBEDDING_MODEL``) with one embedding, so first requests are fast.
    Each is kept loaded; a failure of one is logged and does not stop the other."""
    from .engine.types import EmbeddingRequest, GenerationRequest, Message, SamplingOptions

    async def generate() -> None:
        request = GenerationRequest(
            model=ctx.settings.default_model,
            messages=(Message(role="user", content="Hello"),),
            options=SamplingOptions(max_tokens=16, temperature=0.0),
            keep_alive=-1,
        )
        async with await ctx.engine.generate(request) as generation:
            async for _ in generation:
                pass

    async def embed() -> None:
        await ctx.engine.embed(EmbeddingRequest(model=None, inputs=("Hello",), keep_alive=-1))

    for name, warm in ((ctx.settings.default_model, generate),
                       (ctx.settings.embedding_model, embed)):
        try:
            await warm()
            log.info("warm-up of %s finished", name)
        except Exception as exc:
            log.warning("warm-up of %s failed: %s", name, getattr(exc, "message", exc))


def allowed_methods(routes: Iterable[Any], scope: Scope) -> set[str]:
    """Every method some route among ``routes`` (included routers searched too) serves
    at the path of ``scope``."""
    methods: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.165 nests them
        if included is not None:
            methods |= allowed_methods(included.routes, scope)
            continue
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return methods


def context_of(app: Any) -> ServerContext:
    """The :class:`ServerContext` of an app made by :func:`create_app`."""
    ctx: ServerContext = app.state.ctx
    return ctx

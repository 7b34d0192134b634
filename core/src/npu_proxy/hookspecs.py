"""The whole extension surface of npu-proxy, in one file.

Every hook is prefixed ``npu_proxy_``. Registration hooks receive a ``register``
callback and hand it named objects; the host validates each object and refuses a
duplicate name with an error that names both plugins. The host calls each plugin's
implementation separately, so one plugin's failure is reported against that plugin.
An implementation may accept any subset of a hook's arguments (pluggy's rule).

Kinds of plugin and their entry-point groups:

- ``npu_proxy.api``: API dialects (:class:`npu_proxy.api.ApiDialect`)
- ``npu_proxy.backends``: device backends (:class:`npu_proxy.engine.backend.Backend`),
  the models they ship (:class:`npu_proxy.engine.types.ModelInfo`) and the model
  formats they read (:class:`npu_proxy.engine.formats.ModelFormat`)
- ``npu_proxy.routing``: routing policies (:class:`npu_proxy.engine.routing.RoutingPolicy`)
- ``npu_proxy.metrics``: metrics sinks (:class:`npu_proxy.engine.events.MetricsSink`)

A plugin of any kind may also contribute ``npu-proxy`` subcommands
(:func:`npu_proxy_register_commands`) and ``npu-proxy doctor`` checks
(:class:`npu_proxy.checks.DoctorCheck`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .api import ApiDialect
    from .checks import DoctorCheck
    from .context import ServerContext
    from .engine.backend import Backend
    from .engine.events import MetricsSink
    from .engine.formats import ModelFormat
    from .engine.routing import RoutingPolicy
    from .engine.types import ModelInfo
    from .settings import Settings

PROJECT = "npu_proxy"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def npu_proxy_register_api(
    register: Callable[[ApiDialect], None], settings: Settings
) -> None:
    """Register API dialects (HTTP front ends).

    :param register: call once per :class:`~npu_proxy.api.ApiDialect`; its ``name`` must be
        unique across all plugins.
    :param settings: the server's settings.

    All implementations are called; the return value is ignored.
    """


@hookspec
def npu_proxy_register_backends(
    register: Callable[[Backend], None], settings: Settings
) -> None:
    """Register device backends.

    :param register: call once per :class:`~npu_proxy.engine.backend.Backend`; its ``name``
        must be unique, and at most one active backend may drive each device.
    :param settings: the server's settings (device limits, model path, timeouts).

    All implementations are called; the return value is ignored. Constructing a backend
    must be cheap and must not touch the device: probing happens later, off the loop.
    """


@hookspec
def npu_proxy_register_models(
    register: Callable[[ModelInfo], None], settings: Settings
) -> None:
    """Register models a plugin ships (packaged defaults, simulated models).

    :param register: call once per :class:`~npu_proxy.engine.types.ModelInfo`; its
        ``name`` (``model:tag``) must not clash with another plugin's model.
    :param settings: the server's settings.

    All implementations are called. Models pulled into ``NPU_PROXY_MODEL_PATH`` are read
    from the model store and need no hook; a stored model shadows a registered one.
    """


@hookspec
def npu_proxy_register_model_formats(
    register: Callable[[ModelFormat], None], settings: Settings
) -> None:
    """Register model formats: the kinds of model file a plugin describes, fetches and prepares.

    :param register: call once per :class:`~npu_proxy.engine.formats.ModelFormat`; its
        ``name`` (what ``ModelInfo.format`` holds, e.g. ``"gguf"``) must be unique across
        all plugins.
    :param settings: the server's settings (the model path, for conversion caches).

    All implementations are called. The hub's downloader asks the formats, in
    registration order, which files of a repository to fetch; ``create`` asks them to
    describe a local path; the model store reads each model's details through its
    format. Register the formats your backends load.
    """


@hookspec
def npu_proxy_register_routing_policies(
    register: Callable[[RoutingPolicy], None], settings: Settings
) -> None:
    """Register routing policies.

    :param register: call once per :class:`~npu_proxy.engine.routing.RoutingPolicy`; its
        ``name`` is what ``--routing NAME`` / ``NPU_PROXY_ROUTING`` selects.
    :param settings: the server's settings.

    All implementations are called. Exactly one policy is active: the one named in the
    settings (an unknown name stops startup and lists the installed ones).
    """


@hookspec
def npu_proxy_register_metrics_sinks(
    register: Callable[[MetricsSink], None], settings: Settings
) -> None:
    """Register metrics sinks.

    :param register: call once per :class:`~npu_proxy.engine.events.MetricsSink`; every
        registered sink receives every event.
    :param settings: the server's settings.

    All implementations are called. A sink that also serves HTTP (``/metrics``)
    registers an API dialect as well.
    """


@hookspec
def npu_proxy_startup(ctx: ServerContext) -> Awaitable[None] | None:
    """Run when the server starts, after every object is registered.

    :param ctx: the server context (settings, engine, model store, registries).

    All implementations are called; a returned awaitable is awaited. A failure is
    logged against the plugin and does not stop the server. Long work (warm-up) must
    be started as a background task, not awaited here: ``/health`` must answer at once.
    """


@hookspec
def npu_proxy_shutdown(ctx: ServerContext) -> Awaitable[None] | None:
    """Run when the server stops, before backends are closed.

    :param ctx: the server context.

    All implementations are called in reverse registration order; a returned
    awaitable is awaited; failures are logged and do not stop the others.
    """


@hookspec
def npu_proxy_register_commands(register: Callable[[click.Command], None]) -> None:
    """Register ``npu-proxy`` subcommands (click commands) that this plugin provides.

    :param register: call once per :class:`click.Command`; its ``name`` is the
        subcommand's name and must be unique across plugins and must not be one of the
        core's own commands (``serve``, ``plugins``, ``devices``, ``doctor``).

    All implementations are called, only when the command line looks for a command
    that is not the core's (never by ``serve``). Registering must be cheap: import what
    a command needs (an HTTP client) inside its body, not in the plugin's module.
    """


@hookspec
def npu_proxy_register_doctor_checks(
    register: Callable[[DoctorCheck], None], settings: Settings
) -> None:
    """Register checks that ``npu-proxy doctor`` runs after the core's own.

    :param register: call once per :class:`~npu_proxy.checks.DoctorCheck`; its ``name``
        must be unique across plugins.
    :param settings: the settings the server would use (as the doctor loaded them).

    All implementations are called. Each check's findings are shown under its plugin's
    name; a check that raises is reported as a failure of its plugin, and the doctor
    goes on with the others.
    """

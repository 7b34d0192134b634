"""The ``npu-proxy`` command line: serve, inspect plugins and devices, doctor; and the
commands that plugins contribute (the Ollama plugin's ``pull``, ``list``, ``run``, ...).

``--plugins a,b`` (or ``NPU_PROXY_PLUGINS``) restricts which installed plugins load;
flags override ``NPU_PROXY_*`` variables. Errors are one clear line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.config
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from . import __version__

# The server's modules (settings, plugins, fastapi, the engine) are imported inside the
# functions that use them: a batching worker process started with ``spawn`` re-imports
# the ``npu-proxy`` script's module, and everything imported here delays its compile.
if TYPE_CHECKING:
    from .commands import PluginCommand
    from .plugins import PluginHost
    from .settings import Settings


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    from .settings import SettingsError, load_settings

    try:
        return load_settings(plugins=ctx.obj.get("plugins"), **overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _given_host(ctx: click.Context) -> PluginHost | None:
    """The host an embedding application (or a test) handed in as ``obj[HOST_KEY]``."""
    from .checks import HOST_KEY

    given: PluginHost | None = (ctx.obj or {}).get(HOST_KEY)
    return given


def _host(ctx: click.Context, settings: Settings) -> PluginHost:
    """The host handed in, else the selected installed plugins."""
    from .plugins import PluginError, PluginHost

    given = _given_host(ctx)
    if given is not None:
        return given
    try:
        return PluginHost.load(settings.plugins)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


def _check_plugins(names: list[str]) -> None:
    from .plugins import PluginError, check_installed

    try:
        check_installed(n.strip() for n in names if n.strip())
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


class _Main(click.Group):
    """The command group: the core's commands, then those the loaded plugins register.

    ``serve`` is found without loading any plugin's commands (every 100 ms of imports is
    100 ms before ``/health`` answers), and ``doctor``, which brings an HTTP client, is
    imported only when it runs. A plugin command is looked up by loading the plugins of
    the ``--plugins`` selection and asking them (``npu_proxy_register_commands``).
    """

    _CACHE = "npu_proxy.plugin_commands"

    def list_commands(self, ctx: click.Context) -> list[str]:
        try:
            provided = self._plugin_commands(ctx)
        except click.ClickException as exc:
            click.echo(f"warning: plugin commands are not listed: {exc.message}", err=True)
            provided = {}
        return sorted({*super().list_commands(ctx), "doctor", *provided})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name == "doctor":
            from .doctor import doctor

            return doctor
        provided = self._plugin_commands(ctx)
        if cmd_name in provided:
            return provided[cmd_name].command
        selected = None if _given_host(ctx) else _selection(ctx)
        if selected is not None:
            from .commands import unselected_provider

            owner = unselected_provider(cmd_name, selected)
            if owner is not None:
                dist = f" ({owner.distribution})" if owner.distribution else ""
                raise click.ClickException(
                    f"{cmd_name!r} is provided by the plugin {owner.plugin!r}{dist}, which is "
                    "not loaded; add it to --plugins"
                )
        return None  # click's own "No such command"

    def _plugin_commands(self, ctx: click.Context) -> dict[str, PluginCommand]:
        """The selected plugins' commands, loaded once per invocation."""
        if self._CACHE not in ctx.meta:
            from .commands import plugin_commands
            from .plugins import PluginError, PluginHost

            given = _given_host(ctx)
            try:
                host = given if given is not None else PluginHost.load(_selection(ctx))
                ctx.meta[self._CACHE] = plugin_commands(host)
            except PluginError as exc:
                raise click.ClickException(str(exc)) from None
        provided: dict[str, PluginCommand] = ctx.meta[self._CACHE]
        return provided


def _selection(ctx: click.Context) -> list[str] | None:
    """The ``--plugins`` / ``NPU_PROXY_PLUGINS`` selection; None loads every plugin.

    Read before the group's callback runs (click resolves the command first), so from
    the parsed parameters rather than ``ctx.obj``.
    """
    from .settings import SettingsError, load_settings

    try:
        return load_settings(plugins=ctx.params.get("plugins")).plugins
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


#: ``serve``'s options. Every one defaults to None ("not given"), so the settings'
#: own default or ``NPU_PROXY_*`` variable applies.
_SERVE_OPTIONS = (
    click.option("--host", help="Bind address [NPU_PROXY_HOST, default 0.0.0.0]."),
    click.option("--port", type=int, help="Port [NPU_PROXY_PORT, default 11435]."),
    click.option("--device", help="Preferred device: NPU, GPU or CPU [NPU_PROXY_DEVICE]."),
    click.option("--fallback-device", help="Fallback device [NPU_PROXY_FALLBACK_DEVICE]."),
    click.option("--routing", help="Routing policy by name [NPU_PROXY_ROUTING]."),
    click.option("--model-path", help="Model store directory [NPU_PROXY_MODEL_PATH]."),
    click.option("--real-inference/--mock", default=None,
                 help="Real inference or the mock backend [NPU_PROXY_REAL_INFERENCE]."),
    click.option("--warmup/--no-warmup", default=None,
                 help="Load the default model at startup [NPU_PROXY_WARMUP]."),
    click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR [NPU_PROXY_LOG_LEVEL]."),
)
_SERVE_FLAGS = "npu_proxy.serve_flags"


def _serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add ``serve``'s options to ``command`` (the group takes them too)."""
    for option in reversed(_SERVE_OPTIONS):
        command = option(command)
    return command


@click.group(cls=_Main, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--plugins",
    help="Comma-separated plugin names to load (default: every installed plugin).",
    metavar="A,B,...",
)
@_serve_options
@click.version_option(__version__, prog_name="npu-proxy")
@click.pass_context
def main(ctx: click.Context, /, plugins: str | None, **flags: Any) -> None:
    """Local inference on Intel NPU, GPU and CPU behind the Ollama, OpenAI and Anthropic APIs.

    Without a command it serves: 'npu-proxy --host 127.0.0.1 --port 11435' is
    'npu-proxy serve --host 127.0.0.1 --port 11435'. The server's options given before a
    command apply to serve only.
    """
    ctx.ensure_object(dict)
    ctx.obj["plugins"] = plugins
    given = {name: value for name, value in flags.items() if value is not None}
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve, **flags)
    elif ctx.invoked_subcommand == "serve":
        ctx.meta[_SERVE_FLAGS] = given  # serve's own options win over these
    elif given:
        shown = ", ".join("--" + name.replace("_", "-") for name in sorted(given))
        raise click.UsageError(
            f"{shown} configure the server: give them without a command, or after 'serve'"
        )


@main.command()
@_serve_options
@click.pass_context
def serve(ctx: click.Context, /, **flags: Any) -> None:
    """Start the server.

    npu-proxy without a command does the same, with the same options.
    """
    import uvicorn

    from .app import StartupError, create_app
    from .boot import StagedApp, StagedServer
    from .logs import log_config

    top: dict[str, Any] = ctx.meta.get(_SERVE_FLAGS, {})
    flags = {**top, **{name: value for name, value in flags.items() if value is not None}}
    settings = _settings(ctx, **flags)
    if settings.plugins is not None:
        _check_plugins(settings.plugins)  # before binding: an unknown name is a typo
    config = log_config(settings.log_level)
    logging.config.dictConfig(config)
    from .security import exposure_warning

    warning = exposure_warning(settings)
    if warning:
        logging.getLogger("npu_proxy").warning(warning)
    # uvicorn binds and answers /health, then the plugins are imported and the app is
    # composed in a thread (see npu_proxy.boot); a configuration error stops it again.
    app = StagedApp(lambda: create_app(settings, settings.plugins), settings,
                    expected=(StartupError,), begin_on_startup=False)
    server = StagedServer(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=config,
        # a stop must not wait for a 2048-token stream (systemd kills at 90 s)
        timeout_graceful_shutdown=settings.shutdown_grace,
    ), app)
    app.on_failure = lambda: setattr(server, "should_exit", True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if app.error is not None:
        raise click.ClickException(app.error)
    if not server.started:
        sys.exit(3)  # uvicorn could not bind; it has said why


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List plugins: name, kind, distribution, version, what they provide (commands too),
    hooks, built-in, load errors."""
    from .app import StartupError, build_context
    from .commands import plugin_commands
    from .plugins import PluginError

    settings = _settings(ctx)
    host = _host(ctx, settings)
    try:
        build_context(settings, host)  # runs the registration hooks, recording failures
    except StartupError as exc:
        click.echo(f"warning: {exc}", err=True)
    try:
        plugin_commands(host)  # records each plugin's commands as "Command:NAME"
    except PluginError as exc:
        click.echo(f"warning: {exc}", err=True)
    records = [r.as_dict() for r in host.records]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        origin = "built-in" if r["builtin"] else (r["distribution"] or "inline")
        version = f" {r['version']}" if r["version"] else ""
        click.echo(f"{r['name']:<18} {r['kind']:<9} {origin}{version}")
        if r["registered"]:
            click.echo(f"{'':<18} provides: {', '.join(r['registered'])}")
        if r["hooks"]:
            click.echo(f"{'':<18} hooks: {', '.join(r['hooks'])}")
        if r["error"]:
            click.echo(f"{'':<18} FAILED: {r['error']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def devices(ctx: click.Context, as_json: bool) -> None:
    """Probe every backend's device and report what is present."""
    from .app import StartupError, build_context

    settings = _settings(ctx)
    try:
        server = build_context(settings, _host(ctx, settings))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    infos = asyncio.run(server.engine.probe())
    rows = [
        {
            "device": info.device,
            "backend": server.engine.backends[name].name,
            "present": info.present,
            "full_name": info.full_name,
            "driver_version": info.driver_version,
            "memory_bytes": info.memory_bytes,
            "error": info.error or None,
        }
        for name, info in sorted(infos.items())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no device backends are loaded", err=True)
        sys.exit(1)
    for row in rows:
        state = "present" if row["present"] else "absent"
        detail = row["full_name"] or row["error"] or ""
        click.echo(f"{row['device']:<6} {state:<8} {row['backend']:<14} {detail}")

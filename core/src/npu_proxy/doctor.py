"""``npu-proxy doctor``: one command that says what is wrong with this installation.

The core reports what it knows: the configuration, the plugins that load and the
device backends they bring, the model store, the bind address and whether a server
already answers there, and the API-key state. Then it runs the checks the plugins
register (``npu_proxy_register_doctor_checks``): the OpenVINO plugins' say which
devices OpenVINO sees and, on Linux, whether this user may open them. Each plugin's
findings are shown under its name, and a check that raises is a failure of its plugin,
not of the doctor. Every problem comes with a ``fix:`` line, and the exit code is 1 when
any check failed (warnings alone exit 0), so scripts and CI can call it.

The doctor only looks: it never writes to the model store. (``ModelStore.scan`` would
delete the ``.staging-*`` folder of a pull the running server has in progress, so the
store is read here with the store's own manifest functions instead.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import platform
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
import httpx

from . import __version__
from .checks import HOST_KEY, Check, DoctorCheck, Status, current_user
from .engine.store import MANIFEST, STAGING_PREFIX, manifest_to_info
from .settings import ENV_PREFIX, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from .plugins import PluginHost

__all__ = ["Check", "DoctorCheck", "Status", "doctor", "run_checks"]

#: The hook through which plugins contribute checks.
HOOK = "npu_proxy_register_doctor_checks"

#: Below this much free space next to the model store a pull of a 7B model fails.
LOW_DISK_BYTES = 5 * 1000**3
#: Seconds to wait for a running server's /health.
HEALTH_TIMEOUT = 2.0


@dataclass
class ServerProbe:
    """What answered on the configured port, if anything."""

    state: Literal["free", "npu-proxy", "other", "error"]
    message: str = ""
    health: dict[str, Any] | None = None


# --- configuration and plugins ------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``NPU_PROXY_*`` assignments from a systemd ``EnvironmentFile`` (or a ``.env``).

    Comments, blank lines and other variables are skipped; one level of matching
    quotes is removed. Keys come back as Settings field names (``port``, ``api_key``).
    """
    values: dict[str, str] = {}
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.startswith(ENV_PREFIX):
            values[key[len(ENV_PREFIX):].lower()] = value
    return values


def check_configuration(overrides: dict[str, Any]) -> tuple[Settings | None, list[Check]]:
    """Load the settings the server would use; a bad value fails and stops the rest."""
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        return None, [Check("configuration", "fail", str(exc),
                            fix="correct the named variables (docs/configuration.md)")]
    # Names only: values may be secrets.
    given = sorted(name for name in os.environ if name.startswith(ENV_PREFIX))
    given += sorted(ENV_PREFIX + key.upper() for key in overrides if key != "plugins")
    message = "settings are valid"
    if given:
        message += " (set: " + ", ".join(dict.fromkeys(given)) + ")"
    return settings, [Check("configuration", "ok", message, details={"set": given})]


def check_plugins(
    settings: Settings, host: PluginHost | None = None
) -> tuple[PluginHost | None, list[Check]]:
    """Load the plugins as ``serve`` would (unless ``host`` is given): a named one that
    is missing fails."""
    from .plugins import PluginError, PluginHost

    try:
        host = host or PluginHost.load(settings.plugins)
    except PluginError as exc:
        return None, [Check("plugins", "fail", str(exc),
                            fix="install the plugin or remove it from NPU_PROXY_PLUGINS / "
                                "--plugins")]
    loaded = [r.name for r in host.records if not r.error]
    checks = [Check("plugins", "ok", f"{len(loaded)} loaded: " + ", ".join(loaded),
                    details={"loaded": loaded})]
    for record in host.records:
        if record.error:
            checks.append(Check(
                "plugins", "warn", f"plugin {record.name!r} failed to load and is skipped: "
                f"{record.error}",
                fix=f"reinstall {record.distribution or record.name}, or uninstall it",
            ))
    return host, checks


# --- device backends ------------------------------------------------------------------


def check_backends(settings: Settings, host: PluginHost) -> list[Check]:
    """The device backends the plugins bring for this mode, against the wanted devices.

    What a device itself needs (drivers, device files) is for its backend's plugin to
    check, through ``npu_proxy_register_doctor_checks``.
    """
    from .engine.backend import Backend
    from .plugins import PluginError

    real = settings.real_inference
    mode = "real inference" if real else "mock mode (NPU_PROXY_REAL_INFERENCE=0)"
    try:
        found = host.collect("npu_proxy_register_backends", Backend, settings,  # type: ignore[type-abstract]
                             isolate=True)
    except PluginError as exc:
        return [Check("devices", "fail", str(exc), fix="load only one of the two plugins")]
    # The server's rule: simulated backends serve in mock mode, real ones otherwise.
    active = {b.device: plugin for plugin, b in found if b.simulated == (not real)}
    if not active:
        fix = ("install a device backend plugin (pip install npu-proxy-openvino-cpu "
               "npu-proxy-openvino-gpu npu-proxy-openvino-npu) or set "
               "NPU_PROXY_REAL_INFERENCE=0 for the mock backend") if real else (
               "install and load the mock plugin (npu-proxy-mock)")
        return [Check("devices", "fail" if real else "warn",
                      f"no device backend is loaded for {mode}", fix=fix)]
    listed = ", ".join(f"{device} ({plugin})" for device, plugin in active.items())
    checks = [Check("devices", "ok", f"device backends for {mode}: {listed}",
                    details={"backends": active})]
    if not real:
        return checks  # a simulated backend stands in for every device
    wanted = {settings.device: "NPU_PROXY_DEVICE",
              settings.embedding_device: "NPU_PROXY_EMBEDDING_DEVICE"}
    for device, variable in wanted.items():
        if device not in active:
            checks.append(Check(
                "devices", "warn",
                f"no loaded backend drives {device} ({variable}): requests go to the "
                "fallback device",
                fix=f"install and load the backend plugin for {device}, or set {variable} "
                    f"to one of: {', '.join(active)}",
            ))
    return checks


# --- the plugins' checks --------------------------------------------------------------


def plugin_checks(settings: Settings, host: PluginHost) -> list[Check]:
    """Run every check the plugins register; each finding carries its plugin's name.

    A plugin whose hook or check raises gets a ``fail`` finding of its own; the other
    plugins' checks still run.
    """
    from .plugins import PluginError

    try:
        registered = host.collect(HOOK, DoctorCheck, settings, isolate=True)
    except PluginError as exc:  # two plugins registered one name, or a wrong type
        return [Check("plugins", "fail", str(exc),
                      fix="load only one of the two plugins, or report it to their authors")]
    findings = [
        Check("plugins", "fail", f"plugin {record.name!r} could not register its checks: "
              + record.error.removeprefix(HOOK + ": "), plugin=record.name,
              fix=f"reinstall {record.distribution or record.name}, or report it to its "
                  "authors")
        for record in host.records if record.error and record.error.startswith(HOOK + ":")
    ]
    for plugin, check in registered:
        try:
            found = list(check.run(settings))
        except Exception as exc:  # a broken check is a finding, never the doctor's crash
            found = [Check(
                check.area, "fail",
                f"the check {check.name!r} failed: {type(exc).__name__}: {exc}",
                fix=f"report it to the authors of {plugin!r}, or leave the plugin out of "
                    "--plugins / NPU_PROXY_PLUGINS",
            )]
        findings += [dataclasses.replace(finding, plugin=plugin) for finding in found]
    return findings


# --- the model store ------------------------------------------------------------------


def check_model_store(settings: Settings, server_running: bool) -> list[Check]:
    """The store exists and is writable; its size, models, and leftovers of killed pulls."""
    root = settings.model_path
    hint = "NPU_PROXY_MODEL_PATH"
    if not root.exists():
        return [Check("models", "fail", f"the model store {root} does not exist",
                      fix=f"mkdir -p '{root}' (as the user that runs the server), or point "
                          f"{hint} at an existing directory")]
    if not root.is_dir():
        return [Check("models", "fail", f"the model store {root} is not a directory",
                      fix=f"point {hint} at a directory")]
    checks: list[Check] = []
    if not os.access(root, os.W_OK | os.X_OK):
        checks.append(Check(
            "models", "fail", f"the model store {root} is not writable by {current_user()}: "
            "pulls, deletes and the compiled-model cache will fail",
            fix=f"sudo chown -R {current_user()} '{root}', or point {hint} at a writable directory",
        ))
    models, broken, leftovers = read_store(root)
    size = tree_size(root)
    pulled = (f"{len(models)} pulled model(s): " + ", ".join(m["name"] for m in models)
              if models else "no pulled models yet")
    summary = (f"{root}: {pulled}, {format_bytes(size)} on disk (models that plugins ship "
               "live in their packages)")
    checks.insert(0, Check("models", "ok", summary,
                           details={"path": str(root), "size_bytes": size, "models": models}))
    for name, problem in broken:
        checks.append(Check("models", "warn", f"{name}: {problem}",
                            fix=f"remove '{root / name}' (or 'npu-proxy rm' the model) and "
                                "pull it again"))
    if leftovers:
        listed = ", ".join(p.name for p in leftovers)
        if server_running:
            checks.append(Check("models", "warn",
                                f"unfinished downloads in the store ({listed}): a pull may be "
                                "running now", fix="if no pull is running, restart the server "
                                "(it removes them at startup)"))
        else:
            checks.append(Check(
                "models", "fail", f"leftovers of interrupted pulls in the store: {listed} "
                f"({format_bytes(sum(tree_size(p) for p in leftovers))})",
                fix=f"rm -rf '{root}'/{STAGING_PREFIX}* (the server also removes them when "
                    "it starts)"))
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if free is not None and free < LOW_DISK_BYTES:
        checks.append(Check("models", "warn", f"only {format_bytes(free)} free next to the "
                            "model store: larger pulls will fail",
                            fix=f"free disk space or move {hint} to a larger disk"))
    return checks


def read_store(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[Path]]:
    """(models, broken folders with the reason, staging leftovers), without changing anything."""
    models: list[dict[str, Any]] = []
    broken: list[tuple[str, str]] = []
    leftovers: list[Path] = []
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        return [], [(root.name, f"cannot be listed: {exc.strerror}")], []
    for entry in entries:
        if entry.name.startswith(STAGING_PREFIX):
            leftovers.append(entry)
            continue
        manifest = entry / MANIFEST
        if not manifest.is_file():
            continue
        try:
            info = manifest_to_info(json.loads(manifest.read_text("utf-8")), entry)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            broken.append((entry.name, f"unreadable manifest ({type(exc).__name__})"))
            continue
        if info.path is not None and not info.path.exists():
            broken.append((entry.name, f"model {info.name} lists files that are missing"))
            continue
        models.append({"name": info.name, "format": info.format, "size_bytes": info.size})
    return models, broken, leftovers


def tree_size(root: Path) -> int:
    """Bytes in the regular files under ``root`` (symbolic links are not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walk: not counted
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # unreachable; keeps type checkers content


# --- the network ----------------------------------------------------------------------


def probe_port(host: str, port: int) -> ServerProbe:
    """Is ``host:port`` free, or who answers there? Binds for an instant, never listens."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return ServerProbe("error", f"cannot resolve NPU_PROXY_HOST={host!r}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # The server binds the same way: a port in TIME_WAIT is not "in use".
        if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            return ServerProbe("free")
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
                return ServerProbe("error", f"cannot bind {host}:{port}: {exc.strerror}")
    return _who_answers(_connect_host(host), port)


def _connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _who_answers(host: str, port: int) -> ServerProbe:
    url = f"http://{host}:{port}/health"
    try:
        response = httpx.get(url, timeout=HEALTH_TIMEOUT)
    except httpx.HTTPError as exc:
        return ServerProbe("other", f"something holds the port but {url} does not answer "
                           f"over HTTP ({type(exc).__name__})")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and "version" in body \
            and "devices" in body:
        return ServerProbe("npu-proxy", health=body)
    if response.status_code == 403 and isinstance(body, dict) and \
            "NPU_PROXY_" in str(body.get("error", "")):
        return ServerProbe("npu-proxy", "it refused this machine: " + str(body["error"]))
    return ServerProbe("other", f"{url} answered HTTP {response.status_code}, not as npu-proxy")


def check_network(settings: Settings, probe: ServerProbe) -> list[Check]:
    """The bind address, and whether the port is free or held by a running npu-proxy."""
    where = f"{settings.host}:{settings.port}"
    scope = "this machine only" if _is_loopback(settings.host) else (
        "other machines in NPU_PROXY_ALLOWED_CLIENTS too")
    checks = [Check("network", "ok", f"binds {where} (reachable from {scope})",
                    details={"host": settings.host, "port": settings.port})]
    fix_port = (f"stop the other program (find it: ss -ltnp 'sport = :{settings.port}' or, on "
                f"Windows, Get-NetTCPConnection -LocalPort {settings.port}) or choose another "
                "port with NPU_PROXY_PORT")
    if probe.state == "free":
        service = ("Start-ScheduledTask npu-proxy" if platform.system() == "Windows"
                   else "systemctl start npu-proxy")
        checks.append(Check("network", "info", f"no server is running on {where}; start one "
                            f"with 'npu-proxy serve' (or, installed as a service: {service})"))
    elif probe.state == "error":
        checks.append(Check("network", "fail", probe.message,
                            fix="set NPU_PROXY_HOST to an address of this machine (0.0.0.0 for "
                                "all of them, 127.0.0.1 for this machine only)"))
    elif probe.state == "other":
        checks.append(Check("network", "fail", f"port {settings.port} is in use by another "
                            f"program: {probe.message}", fix=fix_port))
    elif probe.health is None:
        checks.append(Check("network", "warn", f"npu-proxy runs on {where} but {probe.message}",
                            fix="add 127.0.0.1 to NPU_PROXY_ALLOWED_CLIENTS"))
    else:
        health = probe.health
        status = str(health.get("status", "?"))
        present = [d for d, info in health.get("devices", {}).items() if info.get("present")]
        message = (f"npu-proxy {health.get('version', '?')} is running on {where}: status "
                   f"{status}, devices present: {', '.join(present) or 'none'}")
        if status == "degraded":
            checks.append(Check("network", "warn", message,
                                fix="no device is usable: see the devices section"))
        else:
            checks.append(Check("network", "ok", message, details={"health": health}))
    return checks


def _is_loopback(host: str) -> bool:
    from .security import is_loopback

    return is_loopback(host)


# --- the API key ----------------------------------------------------------------------


def check_api_key(settings: Settings) -> list[Check]:
    """Key set or not; open to the world without one fails, open to a LAN warns."""
    # Imported here: cli.py imports this module to register the command.
    from .security import exposure_warning

    make_key = "python -c \"import secrets; print(secrets.token_urlsafe(32))\""
    if settings.api_key is not None:
        length = len(settings.api_key.get_secret_value())
        if length < 16:
            return [Check("security", "warn", f"the API key is short ({length} characters)",
                          fix=f"use a random key of 32+ characters: {make_key}")]
        return [Check("security", "ok", "an API key is required on every route but /health")]
    warning = exposure_warning(settings)
    if warning is None:
        return [Check("security", "ok", "no API key, but only this machine can connect")]
    public = settings.allowed_clients == ["*"] or any(
        not (net.is_private or net.is_loopback or net.is_link_local)
        for net in _networks(settings.allowed_clients)
    )
    return [Check(
        "security", "fail" if public else "warn",
        ("any address on the internet may connect and there is no API key: " if public
         else "") + warning,
        fix=f"set NPU_PROXY_API_KEY (generate one: {make_key})",
    )]


def _networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    from .security import parse_networks

    return [] if values == ["*"] else parse_networks(values)


# --- running it -----------------------------------------------------------------------


def run_checks(overrides: dict[str, Any], host: PluginHost | None = None) -> list[Check]:
    """Every check, in the order they are shown: the core's, with the plugins' after
    the device backends. ``host`` replaces loading the plugins (tests, embedding)."""
    settings, checks = check_configuration(overrides)
    if settings is None:
        return checks
    host, found = check_plugins(settings, host)
    checks += found
    if host is not None:
        checks += check_backends(settings, host)
        checks += plugin_checks(settings, host)
    server = probe_port(settings.host, settings.port)
    checks += check_model_store(settings, server_running=server.state == "npu-proxy")
    checks += check_network(settings, server)
    checks += check_api_key(settings)
    return checks


_MARK = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}


def render(checks: list[Check]) -> str:
    lines = [f"npu-proxy doctor {__version__} (Python {platform.python_version()}, "
             f"{platform.system()})"]
    section: tuple[str, str] | None = None
    for check in checks:
        if (check.area, check.plugin) != section:
            section = (check.area, check.plugin)
            lines.append(f"\n{check.area}" + (f" (plugin {check.plugin})" if check.plugin
                                                else ""))
        lines.append(f"  {_MARK[check.status]}  {check.message}")
        if check.fix and check.status in ("warn", "fail"):
            lines.append(f"        fix: {check.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed or warned:
        lines.append(f"\n{failed} problem(s), {warned} warning(s): see the 'fix:' lines above.")
    else:
        lines.append("\nEverything looks fine.")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also read NPU_PROXY_* settings from this file (e.g. /etc/npu-proxy/env, "
                   "as the systemd service does); they override the environment.")
def doctor(as_json: bool, env_file: Path | None) -> None:
    """Check devices, models, network and security; say what to fix (exit 1 on a problem)."""
    overrides: dict[str, Any] = {}
    if env_file is not None:
        overrides.update(read_env_file(env_file))
    parent = click.get_current_context().find_object(dict) or {}
    if parent.get("plugins"):  # npu-proxy --plugins a,b doctor
        overrides["plugins"] = parent["plugins"]
    checks = run_checks(overrides, parent.get(HOST_KEY))
    if as_json:
        click.echo(json.dumps({
            "version": __version__,
            "ok": not any(c.status == "fail" for c in checks),
            "checks": [asdict(c) for c in checks],
        }, indent=2, default=str))
    else:
        click.echo(render(checks))
    if any(c.status == "fail" for c in checks):
        sys.exit(1)

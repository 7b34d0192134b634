"""``npu-proxy doctor``: one command that says what is wrong with this installation.

It reports the configuration, the plugins that load, the devices OpenVINO sees (and,
on Linux, whether this user may open them), the model store, the bind address and
whether a server already answers there, and the API-key state. Every problem comes
with a ``fix:`` line, and the exit code is 1 when any check failed (warnings alone
exit 0), so scripts and CI can call it.

The doctor only looks: it never writes to the model store. (``ModelStore.scan`` would
delete the ``.staging-*`` folder of a pull the running server has in progress, so the
store is read here with the store's own manifest functions instead.)
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import platform
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import httpx

from . import __version__
from .engine.store import MANIFEST, STAGING_PREFIX, manifest_to_info
from .settings import ENV_PREFIX, Settings, SettingsError, load_settings

Status = Literal["ok", "info", "warn", "fail"]

#: Below this much free space next to the model store a pull of a 7B model fails.
LOW_DISK_BYTES = 5 * 1000**3
#: Seconds to wait for a running server's /health.
HEALTH_TIMEOUT = 2.0


@dataclass
class Check:
    """One finding: ``fail`` makes the exit code 1, ``warn`` is worth a look."""

    area: str
    status: Status
    message: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


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


def check_plugins(settings: Settings) -> list[Check]:
    """Load the plugins as ``serve`` would: a named one that is missing fails."""
    from .plugins import PluginError, PluginHost

    try:
        host = PluginHost.load(settings.plugins)
    except PluginError as exc:
        return [Check("plugins", "fail", str(exc),
                      fix="install the plugin or remove it from NPU_PROXY_PLUGINS / --plugins")]
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
    return checks


# --- devices --------------------------------------------------------------------------


def probe_openvino() -> dict[str, Any]:
    """OpenVINO's version and devices: ``{"installed", "version", "devices", "error"}``.

    ``devices`` maps each OpenVINO device name to its full name and driver version.
    Imported here, not at the top, so the doctor works where OpenVINO is not installed.
    """
    try:
        import openvino
    except ImportError:
        return {"installed": False, "version": "", "devices": {}, "error": ""}
    # "2025.3.0-19807-44526285f24-releases/2025/3" -> "2025.3.0"
    version = str(getattr(openvino, "__version__", "") or openvino.get_version()).split("-")[0]
    try:
        core = openvino.Core()
        names = list(core.available_devices)
    except Exception as exc:  # a broken driver is a finding, not a crash
        return {"installed": True, "version": version, "devices": {}, "error": str(exc)}
    devices = {}
    for name in names:
        devices[name] = {
            "full_name": str(_property(core, name, "FULL_DEVICE_NAME") or name),
            "driver_version": _driver_version(core, name),
        }
    return {"installed": True, "version": version, "devices": devices, "error": ""}


def _property(core: Any, device: str, key: str) -> Any:
    try:
        return core.get_property(device, key)
    except Exception:
        return None


def _driver_version(core: Any, device: str) -> str:
    for key in ("NPU_DRIVER_VERSION", "GPU_DRIVER_VERSION", "DRIVER_VERSION"):
        value = _property(core, device, key)
        if value:
            return str(value)
    return ""


#: What to do when OpenVINO does not see a device, per device.
_DEVICE_FIX = {
    "Linux": {
        "NPU": "load the NPU driver (kernel 6.3+ with intel_vpu: 'sudo modprobe intel_vpu'; "
               "user space: the linux-npu-driver packages) and check /dev/accel/accel0",
        "GPU": "install Intel's compute runtime (Debian/Ubuntu: intel-opencl-icd and "
               "libze-intel-gpu1) and check /dev/dri/renderD128",
    },
    "Windows": {
        "NPU": "install or update the Intel NPU driver (Device Manager > Neural processors)",
        "GPU": "install or update the Intel graphics driver",
    },
}


def check_devices(settings: Settings, probe: dict[str, Any]) -> list[Check]:
    """Devices OpenVINO sees, against the devices the settings ask for."""
    real = settings.real_inference
    if not probe["installed"]:
        if not real:
            return [Check("devices", "info", "OpenVINO is not installed (mock mode needs none)")]
        return [Check("devices", "fail", "OpenVINO is not installed: real inference cannot run",
                      fix="install the OpenVINO backends (pip install npu-proxy-openvino-cpu "
                          "npu-proxy-openvino-gpu npu-proxy-openvino-npu) or set "
                          "NPU_PROXY_REAL_INFERENCE=0 for the mock backend")]
    if probe["error"]:
        return [Check("devices", "fail" if real else "warn",
                      f"OpenVINO {probe['version']} could not list devices: {probe['error']}",
                      fix="reinstall the device drivers, then run 'npu-proxy devices'")]
    devices: dict[str, dict[str, str]] = probe["devices"]
    if not devices:
        return [Check("devices", "fail" if real else "warn",
                      f"OpenVINO {probe['version']} sees no device",
                      fix="reinstall openvino; even a CPU should always be listed")]
    seen = "; ".join(
        f"{name}: {info['full_name']}" + (f" (driver {info['driver_version']})"
                                          if info["driver_version"] else "")
        for name, info in devices.items()
    )
    checks = [Check("devices", "ok", f"OpenVINO {probe['version']} sees {seen}",
                    details={"openvino": probe["version"], "devices": devices})]
    fixes = _DEVICE_FIX.get(platform.system(), {})
    wanted = {settings.device: "NPU_PROXY_DEVICE", settings.embedding_device:
              "NPU_PROXY_EMBEDDING_DEVICE"}
    for device, variable in wanted.items():
        if any(name == device or name.startswith(device + ".") for name in devices):
            continue
        fix = fixes.get(device, f"check that {device} is a device OpenVINO knows")
        checks.append(Check(
            "devices", "warn" if real else "info",
            f"{device} ({variable}) is not available: requests go to the fallback device",
            fix=f"{fix}; or set {variable} to one of: {', '.join(devices)}",
        ))
    return checks


def check_device_nodes(settings: Settings) -> list[Check]:
    """Linux: the NPU and GPU device files exist and this user may open them."""
    if platform.system() != "Linux" or not settings.real_inference:
        return []
    checks = []
    for pattern, device in (("accel/accel*", "NPU"), ("dri/renderD*", "GPU")):
        nodes = sorted(Path("/dev").glob(pattern))
        if not nodes:
            continue
        blocked = [str(n) for n in nodes if not os.access(n, os.R_OK | os.W_OK)]
        if blocked:
            checks.append(Check(
                "devices", "fail" if device == settings.device else "warn",
                f"{device} device files exist but this user may not open them: "
                + ", ".join(blocked),
                fix=f"sudo usermod -aG render {_user()} (then log in again); the systemd "
                    "service user gets the render group from install_linux.sh",
            ))
        else:
            checks.append(Check("devices", "ok", f"{device} device files are accessible: "
                                + ", ".join(str(n) for n in nodes)))
    return checks


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "$USER"


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
            "models", "fail", f"the model store {root} is not writable by {_user()}: "
            "pulls, deletes and the compiled-model cache will fail",
            fix=f"sudo chown -R {_user()} '{root}', or point {hint} at a writable directory",
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
    from .cli import is_loopback

    return is_loopback(host)


# --- the API key ----------------------------------------------------------------------


def check_api_key(settings: Settings) -> list[Check]:
    """Key set or not; open to the world without one fails, open to a LAN warns."""
    # Imported here: cli.py imports this module to register the command.
    from .cli import exposure_warning

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


def run_checks(overrides: dict[str, Any]) -> list[Check]:
    """Every check, in the order they are shown."""
    settings, checks = check_configuration(overrides)
    if settings is None:
        return checks
    checks += check_plugins(settings)
    checks += check_devices(settings, probe_openvino())
    checks += check_device_nodes(settings)
    server = probe_port(settings.host, settings.port)
    checks += check_model_store(settings, server_running=server.state == "npu-proxy")
    checks += check_network(settings, server)
    checks += check_api_key(settings)
    return checks


_MARK = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}


def render(checks: list[Check]) -> str:
    lines = [f"npu-proxy doctor {__version__} (Python {platform.python_version()}, "
             f"{platform.system()})"]
    area = ""
    for check in checks:
        if check.area != area:
            area = check.area
            lines.append(f"\n{area}")
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
    parent = click.get_current_context().find_object(dict)
    if parent and parent.get("plugins"):  # npu-proxy --plugins a,b doctor
        overrides["plugins"] = parent["plugins"]
    checks = run_checks(overrides)
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

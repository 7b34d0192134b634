"""Plugin discovery (stevedore) and registration/dispatch (pluggy).

Policy, on purpose: a plugin asked for by name (``--plugins``) that is missing or fails
to import stops startup with an error naming it and listing what is installed; an
autoloaded plugin that fails is skipped, logged, and shown by ``npu-proxy plugins``.
Every :class:`PluginHost` has its own pluggy manager: no module-global state.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import pluggy
from stevedore import ExtensionManager, NamedExtensionManager

from . import hookspecs
from .hookspecs import PROJECT
from .settings import SettingsError

log = logging.getLogger(__name__)

#: Entry-point group of each plugin kind.
GROUPS: dict[str, str] = {
    "api": "npu_proxy.api",
    "backends": "npu_proxy.backends",
    "routing": "npu_proxy.routing",
    "metrics": "npu_proxy.metrics",
}

#: Plugins that ship in the box; loaded through the same hooks as third-party ones.
BUILTIN_PLUGINS: tuple[str, ...] = ("npu_proxy.builtin",)

T = TypeVar("T")


class PluginError(Exception):
    """A plugin problem that stops startup; the message says which plugin and why."""


@dataclass
class PluginRecord:
    """What ``npu-proxy plugins`` shows for one plugin."""

    name: str
    kind: str
    module: str
    distribution: str = ""
    version: str = ""
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    registered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "registered": self.registered,
            "error": self.error,
        }


def installed_plugins() -> dict[str, str]:
    """Installed entry-point names -> kind, read from metadata without importing."""
    found: dict[str, str] = {}
    for kind, group in GROUPS.items():
        for ep in metadata.entry_points(group=group):
            found.setdefault(ep.name, kind)
    return found


def check_installed(names: Iterable[str]) -> dict[str, str]:
    """``installed_plugins()``, or :class:`PluginError` naming the ``names`` that are not
    installed and listing those that are (nothing is imported)."""
    installed = installed_plugins()
    missing = [n for n in names if n not in installed]
    if missing:
        raise PluginError(
            f"plugin(s) not installed: {', '.join(missing)}. "
            f"Installed plugins: {', '.join(sorted(installed)) or 'none'}"
        )
    return installed


def _entry_point_distribution(group: str, name: str) -> tuple[str, str]:
    """The distribution (name, version) that declares entry point ``name`` in ``group``."""
    for ep in metadata.entry_points(group=group, name=name):
        if ep.dist is not None:
            return ep.dist.name, ep.dist.version
    return "", ""


def _distribution_of(module: str) -> tuple[str, str]:
    top = module.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    if not dists:
        return "", ""
    try:
        return dists[0], metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        return dists[0], ""


class PluginHost:
    """One server's plugins: a fresh pluggy manager plus the load report."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.requested: set[str] = set()

    # --- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, names: Iterable[str] | None = None) -> PluginHost:
        """Built-ins plus the named plugins (or, with ``names=None``, all installed ones).

        Raises :class:`PluginError` when a named plugin is missing or broken.
        """
        host = cls()
        # stevedore memoises each group's entry points for the life of the process; a
        # host must see what is installed now (a plugin added since the last app).
        ExtensionManager.ENTRY_POINT_CACHE.clear()
        for module in BUILTIN_PLUGINS:
            host.add_module(module.rsplit(".", 1)[-1], importlib.import_module(module), "builtin")
        if names is None:
            host._autoload()
        else:
            host._load_named([n.strip() for n in names if n.strip()])
        host.pm.check_pending()
        return host

    def _autoload(self) -> None:
        for kind, group in GROUPS.items():
            failures: list[tuple[str, str]] = []

            def failed(_mgr: Any, ep: Any, exc: BaseException, sink: Any = failures) -> None:
                sink.append((ep.name, f"{type(exc).__name__}: {exc}"))

            mgr = ExtensionManager(
                group, invoke_on_load=False, on_load_failure_callback=failed
            )
            for ext in mgr:
                self._add_extension(ext.name, ext.plugin, kind, ext.entry_point)
            for name, error in failures:
                log.warning("skipping plugin %r (%s): %s", name, kind, error)
                dist, version = _entry_point_distribution(group, name)
                self.records.append(
                    PluginRecord(name, kind, "", distribution=dist, version=version, error=error)
                )

    def _load_named(self, names: list[str]) -> None:
        self.requested = set(names)
        installed = check_installed(names)
        for kind, group in GROUPS.items():
            wanted = [n for n in names if installed[n] == kind]
            if not wanted:
                continue
            errors: list[str] = []

            def failed(_mgr: Any, ep: Any, exc: BaseException, sink: Any = errors) -> None:
                sink.append(f"{ep.name}: {type(exc).__name__}: {exc}")

            mgr = NamedExtensionManager(
                group,
                names=wanted,
                invoke_on_load=False,
                name_order=True,
                on_load_failure_callback=failed,
            )
            if errors:
                raise PluginError(
                    "plugin(s) failed to load: " + "; ".join(errors)
                    + f". Installed plugins: {', '.join(sorted(installed))}"
                )
            unloaded = set(wanted) - set(mgr.names())
            if unloaded:
                raise PluginError(
                    f"plugin(s) could not be loaded: {', '.join(sorted(unloaded))}. "
                    f"Installed plugins: {', '.join(sorted(installed))}"
                )
            for ext in mgr:
                self._add_extension(ext.name, ext.plugin, kind, ext.entry_point)

    def _add_extension(self, name: str, plugin: Any, kind: str, entry_point: Any) -> None:
        if not isinstance(plugin, ModuleType) and not hasattr(plugin, "__dict__"):
            raise PluginError(f"plugin {name!r} is not a module or object with hooks")
        dist, version = _entry_point_distribution(GROUPS[kind], name)
        self.add_module(name, plugin, kind, distribution=dist, version=version)

    def add_module(
        self,
        name: str,
        plugin: Any,
        kind: str,
        *,
        distribution: str = "",
        version: str = "",
    ) -> None:
        """Register ``plugin`` (a module or object with ``npu_proxy_*`` hooks) as ``name``."""
        existing = self.pm.get_plugin(name)
        if existing is not None:
            other = next((r for r in self.records if r.name == name), None)
            raise PluginError(
                f"two plugins are named {name!r}: {getattr(plugin, '__name__', plugin)!s} "
                f"and {other.module if other else existing!s}"
            )
        module = getattr(plugin, "__name__", type(plugin).__name__)
        builtin = kind == "builtin"
        if not distribution:
            distribution, version = _distribution_of(module)
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.records.append(
            PluginRecord(
                name=name,
                kind=kind,
                module=module,
                distribution=distribution,
                version=version,
                builtin=builtin,
                hooks=hooks,
            )
        )

    def add_inline(self, name: str, plugin: Any, kind: str = "inline") -> None:
        """Register an object or module defined in code (tests, embedding applications)."""
        self.add_module(name, plugin, kind)
        self.pm.check_pending()

    # --- registration hooks ----------------------------------------------------------

    def collect(
        self, hook: str, expected: type[T], settings: Any, *, isolate: bool = False
    ) -> list[tuple[str, T]]:
        """Call ``hook`` on each plugin with a ``register`` callback; return (plugin, object).

        Objects must be ``expected`` instances with a unique ``name``; a duplicate is a
        :class:`PluginError` naming both plugins. A plugin whose hook raises is fatal if
        it was asked for by name (or is built in), otherwise skipped and recorded; a
        :class:`~npu_proxy.settings.SettingsError` (an invalid variable of the plugin's
        own settings) is always fatal, as an invalid core variable is; with ``isolate``
        (the doctor, which reports rather than stops) a failure is always skipped and
        recorded in its :attr:`PluginRecord.error`.
        """
        collected: list[tuple[str, T]] = []
        owners: dict[str, str] = {}
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or "?"

            def register(obj: T, plugin_name: str = plugin_name) -> None:
                if not isinstance(obj, expected):
                    raise PluginError(
                        f"plugin {plugin_name!r} registered {type(obj).__name__} "
                        f"where {expected.__name__} is expected"
                    )
                name = getattr(obj, "name", "")
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {plugin_name!r} registered an object without name")
                if name in owners:
                    raise PluginError(
                        f"{expected.__name__} {name!r} is registered by both plugin "
                        f"{owners[name]!r} and plugin {plugin_name!r}"
                    )
                owners[name] = plugin_name
                collected.append((plugin_name, obj))
                record = self.record(plugin_name)
                if record is not None:
                    record.registered.append(f"{expected.__name__}:{name}")

            kwargs = {"register": register, "settings": settings}
            try:
                impl.function(*(kwargs[a] for a in impl.argnames))
            except PluginError:
                raise
            except Exception as exc:
                record = self.record(plugin_name)
                # An invalid variable of the plugin's own settings is the user's to fix,
                # and fatal as an invalid core variable is, whoever loaded the plugin.
                fatal = isinstance(exc, SettingsError) or plugin_name in self.requested or (
                    record is not None and record.builtin)
                if fatal and not isolate:
                    raise PluginError(f"plugin {plugin_name!r} failed in {hook}: {exc}") from exc
                if isolate:  # the caller reports it; a traceback would read as a crash
                    log.debug("plugin %r failed in %s", plugin_name, hook, exc_info=True)
                else:
                    log.exception("plugin %r failed in %s; skipping it", plugin_name, hook)
                if record is not None:
                    record.error = f"{hook}: {type(exc).__name__}: {exc}"
        return collected

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on each plugin separately; returns (plugin, result) and logs errors."""
        results: list[tuple[str, Any]] = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or "?"
            try:
                results.append((plugin_name, impl.function(*(kwargs[a] for a in impl.argnames))))
            except Exception:
                log.exception("plugin %r failed in %s", plugin_name, hook)
        return results

    def record(self, name: str) -> PluginRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def names(self) -> list[str]:
        return [r.name for r in self.records if r.error is None]

"""The contract of ``npu-proxy doctor``'s checks: what a check finds, and what a plugin
registers through ``npu_proxy_register_doctor_checks``.

This module imports nothing beyond the standard library, so a plugin's entry-point
module may import it without slowing ``npu-proxy serve`` down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .settings import Settings

#: Key of a :class:`~npu_proxy.plugins.PluginHost` in the ``npu-proxy`` click context's
#: ``obj``: an application (or a test) that composes its own plugins, inline ones
#: included, passes ``obj={HOST_KEY: host}`` and every command (plugin commands,
#: ``plugins``, ``devices``, ``doctor``) uses that host instead of loading the
#: installed plugins.
HOST_KEY = "plugin_host"

#: ``fail`` makes ``npu-proxy doctor`` exit 1; ``warn`` is worth a look; ``info`` and
#: ``ok`` are facts.
Status = Literal["ok", "info", "warn", "fail"]


@dataclass
class Check:
    """One finding, shown under its ``area`` (``devices``, ``models``, ...).

    ``fix`` is shown for ``warn`` and ``fail``; ``details`` appear in ``--json`` only.
    ``plugin`` names the plugin the finding came from ("" for the core's own checks);
    the doctor fills it in, a plugin need not.
    """

    area: str
    status: Status
    message: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    plugin: str = ""


@dataclass(frozen=True)
class DoctorCheck:
    """A check a plugin contributes to ``npu-proxy doctor``.

    ``name`` is unique across plugins; ``area`` is the section its findings (and its
    failure, if ``run`` raises) are shown under. ``run(settings)`` looks, never changes
    anything, and returns its findings (an empty list when it has nothing to say, e.g.
    a Linux-only check on Windows).
    """

    name: str
    area: str
    run: Callable[[Settings], Iterable[Check]]


def current_user() -> str:
    """This process's user name, for a fix such as ``sudo usermod -aG render NAME``."""
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no passwd entry (a container's arbitrary uid)
        return "$USER"

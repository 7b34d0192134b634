"""The ``npu-proxy`` subcommands that plugins contribute (``npu_proxy_register_commands``).

The host owns validation: two plugins registering one name, or a plugin registering a
core command's name, is a :class:`~npu_proxy.plugins.PluginError` naming them. Which
plugin provides a command that the ``--plugins`` selection leaves out is found the same
way, by asking every installed plugin, never from a list of names kept here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import click

from .plugins import PluginError, PluginHost

#: The core's own commands: no plugin may register one of these names.
CORE_COMMANDS: frozenset[str] = frozenset({"serve", "plugins", "devices", "doctor"})

HOOK = "npu_proxy_register_commands"


@dataclass(frozen=True)
class PluginCommand:
    """A command and the plugin (and distribution) that provides it."""

    command: click.Command
    plugin: str
    distribution: str


def plugin_commands(
    host: PluginHost, reserved: Collection[str] = CORE_COMMANDS
) -> dict[str, PluginCommand]:
    """Every command the host's plugins register, by name.

    Raises :class:`PluginError` when two plugins register the same name (naming both)
    or a plugin registers one of ``reserved``.
    """
    found: dict[str, PluginCommand] = {}
    for plugin, command in host.collect(HOOK, click.Command, None):
        name = str(command.name)
        if name in reserved:
            raise PluginError(
                f"plugin {plugin!r} registers the command {name!r}, which is a core "
                "command; a plugin cannot replace it"
            )
        record = host.record(plugin)
        found[name] = PluginCommand(command, plugin, record.distribution if record else "")
    return found


def unselected_provider(name: str, selected: Collection[str]) -> PluginCommand | None:
    """The installed plugin outside ``selected`` that provides command ``name``, if any.

    Loads every installed plugin (an autoload: a broken one is skipped) and asks each
    for its commands; used only to explain a command that the selection lacks.
    """
    try:
        everything = plugin_commands(PluginHost.load(None))
    except PluginError:
        return None
    provider = everything.get(name)
    if provider is None or provider.plugin in selected:
        return None
    return provider

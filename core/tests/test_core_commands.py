"""Commands that plugins contribute to ``npu-proxy`` (``npu_proxy_register_commands``):
they run through the core's command line, a duplicate name or a core command's name is
refused naming the plugins, and ``serve`` never asks the plugins for commands.

The plugins are inline; the command line is handed their host through the click
context (``obj={HOST_KEY: host}``), as an embedding application would.
"""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from npu_proxy.checks import HOST_KEY
from npu_proxy.cli import main
from npu_proxy.commands import CORE_COMMANDS, plugin_commands
from npu_proxy.plugins import PluginError
from npu_proxy.testing import inline_plugin, make_host


@click.command()
@click.argument("name")
@click.option("--shout", is_flag=True, help="Greet loudly.")
def hello(name: str, shout: bool) -> None:
    """Greet NAME."""
    greeting = f"hello, {name}"
    click.echo(greeting.upper() if shout else greeting)


def provides(*commands: click.Command) -> Any:
    """An inline plugin that registers ``commands``."""
    return inline_plugin(
        npu_proxy_register_commands=lambda register: [register(c) for c in commands])


def invoke(args: list[str], **plugins: Any) -> Result:
    """``npu-proxy ARGS`` with only the built-ins and the inline ``plugins`` loaded."""
    return CliRunner().invoke(main, args, obj={HOST_KEY: make_host([], plugins)})


def test_a_plugin_command_runs_and_is_listed() -> None:
    result = invoke(["hello", "--shout", "npu"], greeter=provides(hello))
    assert result.exit_code == 0, result.output
    assert result.output == "HELLO, NPU\n"
    listed = invoke(["--help"], greeter=provides(hello))
    assert "  hello    Greet NAME.\n" in listed.output
    assert "  serve " in listed.output and "  doctor " in listed.output


def test_two_plugins_registering_one_name_are_refused_naming_both() -> None:
    result = invoke(["hello", "x"], first=provides(hello), second=provides(hello))
    assert result.exit_code == 1
    assert result.output == (
        "Error: Command 'hello' is registered by both plugin 'first' and plugin 'second'\n")


@pytest.mark.parametrize("name", sorted(CORE_COMMANDS))
def test_a_plugin_cannot_replace_a_core_command(name: str) -> None:
    impostor = click.Command(name, callback=lambda: click.echo("impostor"))
    host = make_host([], {"impostor": provides(impostor)})
    with pytest.raises(PluginError, match=(
            f"plugin 'impostor' registers the command '{name}', which is a core command")):
        plugin_commands(host)
    listed = CliRunner().invoke(main, ["--help"], obj={HOST_KEY: host})
    assert "warning: plugin commands are not listed: plugin 'impostor' registers" \
        in listed.output


def test_serve_never_asks_the_plugins_for_commands() -> None:
    asked: list[str] = []

    def register_commands(register: Any) -> None:
        asked.append("asked")
        register(hello)

    plugin = inline_plugin(npu_proxy_register_commands=register_commands)
    result = invoke(["serve", "--help"], counting=plugin)
    assert result.exit_code == 0 and "Start the server." in result.output
    assert asked == []
    assert invoke(["hello", "x"], counting=plugin).output == "hello, x\n"
    assert asked == ["asked"]


def test_an_unknown_command_is_clicks_usual_error() -> None:
    result = invoke(["nosuch"], greeter=provides(hello))
    assert result.exit_code == 2
    assert "Error: No such command 'nosuch'." in result.output


def test_the_plugins_command_shows_what_a_plugin_provides() -> None:
    result = invoke(["plugins"], greeter=provides(hello))
    assert "greeter            inline    inline\n" in result.output
    assert "                   provides: Command:hello\n" in result.output
    assert "                   hooks: npu_proxy_register_commands\n" in result.output

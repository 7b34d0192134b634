"""The model commands the Ollama plugin adds to ``npu-proxy``: pull, list/ls, show, rm,
cp, ps, create, run.

Each command talks to a running server over the Ollama API, as the ``ollama`` CLI does:
the server URL is ``--url``, else ``NPU_PROXY_URL``, else
``http://127.0.0.1:$NPU_PROXY_PORT`` (port 11435 by default), and ``NPU_PROXY_API_KEY``
is sent as a Bearer token when set. Failures are one ``Error: ...`` line on stderr and
exit status 1. :data:`COMMANDS` is what the plugin registers.

The HTTP client (httpx) is imported inside the commands: the command line imports this
module to list and find commands, and a command that is not run must cost nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_format import (
    PullDisplay,
    describe_model,
    human_ago,
    human_bytes,
    human_until,
    parse_time,
    table,
)

if TYPE_CHECKING:
    from .cli_client import ServerClient

DEFAULT_PORT = 11435


def server_url(explicit: str | None = None) -> str:
    """``--url``, else ``NPU_PROXY_URL``, else the local server on ``NPU_PROXY_PORT``."""
    url = explicit or os.environ.get("NPU_PROXY_URL")
    if not url:
        url = f"http://127.0.0.1:{os.environ.get('NPU_PROXY_PORT') or DEFAULT_PORT}"
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")



# --- the commands ----------------------------------------------------------------------

url_option = click.option(
    "--url",
    metavar="URL",
    help=f"Server URL [NPU_PROXY_URL, default http://127.0.0.1:$NPU_PROXY_PORT "
    f"(port {DEFAULT_PORT})].",
)


@contextlib.contextmanager
def _client(url: str | None) -> Iterator[ServerClient]:
    from .cli_client import ServerClient

    client = ServerClient(server_url(url), os.environ.get("NPU_PROXY_API_KEY") or None)
    try:
        yield client
    finally:
        client.close()


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


@click.command()
@click.argument("name")
@url_option
def pull(name: str, url: str | None) -> None:
    """Download a model from Hugging Face into the server's model store.

    NAME is an alias (tinyllama, phi2, bge-small, ...), an OpenVINO repository as
    org/repo, or a GGUF repository as hf.co/org/repo:QUANT.
    """
    display = PullDisplay(sys.stdout, _stdout_is_tty())
    with _client(url) as client:
        try:
            with client.stream("/api/pull", {"model": name, "stream": True}) as messages:
                for message in messages:
                    display.update(message)
        finally:
            display.close()


@click.command("list")
@url_option
def list_models(url: str | None) -> None:
    """List the models in the server's store."""
    with _client(url) as client:
        models = client.call("GET", "/api/tags").get("models") or []
    now = datetime.now(UTC)
    rows = [
        (
            str(m.get("name") or m.get("model")),
            str(m.get("digest") or "")[:12],
            human_bytes(int(m.get("size") or 0)),
            human_ago(parse_time(str(m.get("modified_at") or "")), now),
        )
        for m in models
    ]
    click.echo(table(("NAME", "ID", "SIZE", "MODIFIED"), rows))


def _processor(model: dict[str, Any]) -> str:
    device = model.get("device")
    if device:
        return f"100% {device}"
    size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
    return "100% GPU" if size and vram >= size else "100% CPU"


@click.command()
@url_option
def ps(url: str | None) -> None:
    """List the models loaded on a device, and until when they stay loaded."""
    with _client(url) as client:
        models = client.call("GET", "/api/ps").get("models") or []
    now = datetime.now(UTC)
    rows = [
        (
            str(m.get("name") or m.get("model")),
            str(m.get("digest") or "")[:12],
            human_bytes(int(m.get("size") or 0)),
            _processor(m),
            human_until(parse_time(str(m.get("expires_at") or "")), now),
        )
        for m in models
    ]
    click.echo(table(("NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"), rows))

@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the server's whole answer as JSON.")
@url_option
def show(name: str, as_json: bool, url: str | None) -> None:
    """Show a model's facts: architecture, size, context length, capabilities."""
    with _client(url) as client:
        shown = client.call("POST", "/api/show", {"model": name})
    click.echo(json.dumps(shown, indent=2) if as_json else describe_model(shown))


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@url_option
def rm(names: tuple[str, ...], url: str | None) -> None:
    """Delete models from the store (files a model was created from are kept)."""
    from .cli_client import ServerError, ServerUnreachable

    failed = False
    with _client(url) as client:
        for name in names:
            try:
                client.call("DELETE", "/api/delete", {"model": name})
            except ServerUnreachable:
                raise
            except ServerError as exc:
                click.echo(f"Error: {exc.message}", err=True)
                failed = True
                continue
            click.echo(f"deleted '{name}'")
    if failed:
        sys.exit(1)


@click.command()
@click.argument("source")
@click.argument("destination")
@url_option
def cp(source: str, destination: str, url: str | None) -> None:
    """Copy a model under a new name."""
    with _client(url) as client:
        client.call("POST", "/api/copy", {"source": source, "destination": destination})
    click.echo(f"copied '{source}' to '{destination}'")


@click.command()
@click.argument("name")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="FILE.gguf|DIR",
    help="A GGUF file or an OpenVINO IR folder on the server's machine, or a model name.",
)
@url_option
def create(name: str, source: str, url: str | None) -> None:
    """Register a local GGUF file or OpenVINO IR folder as a model (files stay in place)."""
    path = Path(source).expanduser()
    # The server runs on this machine: it needs the absolute path. A value that is no
    # path here is passed on as a model name to derive from.
    origin = str(path.resolve()) if path.exists() else source
    with (
        _client(url) as client,
        client.stream("/api/create", {"model": name, "from": origin, "stream": True}) as messages,
    ):
        for message in messages:
            click.echo(str(message.get("status", "")))


@click.command()
@click.argument("name")
@click.argument("prompt", required=False)
@url_option
def run(name: str, prompt: str | None, url: str | None) -> None:
    """Chat with a model: one answer to PROMPT, or an interactive chat without one.

    In the chat, /bye or Ctrl-D leaves, /clear forgets the conversation, and Ctrl-C
    stops a reply. When stdin is not a terminal, each line is one message.
    """
    from .cli_chat import ChatSession

    with _client(url) as client:
        chat = ChatSession(client, name)
        chat.check_model()
        chat.load()
        if prompt is not None:
            chat.say(prompt)
            return
        stdin = sys.stdin
        if stdin.isatty():
            chat.interactive()
        else:
            chat.from_lines(stdin)


def _alias(command: click.Command, name: str) -> click.Command:
    return click.Command(
        name,
        callback=command.callback,
        params=command.params,
        help=f"Alias of {command.name}.",
        short_help=f"Alias of {command.name}.",
    )


ls = _alias(list_models, "ls")

#: The model commands, in the order ``npu-proxy --help`` lists them.
COMMANDS: tuple[click.Command, ...] = (pull, list_models, ls, show, rm, cp, ps, create, run)

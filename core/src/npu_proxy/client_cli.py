"""Model commands of the ``npu-proxy`` CLI: pull, list/ls, show, rm, cp, ps, create, run.

Each command talks to a running server over the Ollama API, as the ``ollama`` CLI does:
the server URL is ``--url``, else ``NPU_PROXY_URL``, else
``http://127.0.0.1:$NPU_PROXY_PORT`` (port 11435 by default), and ``NPU_PROXY_API_KEY``
is sent as a Bearer token when set. Failures are one ``Error: ...`` line on stderr and
exit status 1. :data:`COMMANDS` lists the commands for the CLI group to add.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click
import httpx

DEFAULT_PORT = 11435
#: Requests that answer at once; streamed ones (pull, run, create) have no read timeout,
#: since a cold NPU compile or a large download can take minutes between lines.
_QUICK = httpx.Timeout(60.0, connect=5.0)
_STREAMED = httpx.Timeout(None, connect=5.0)
#: Expiry dates this far out mean "kept loaded forever" (the server's sentinel is 2318).
_FOREVER_YEAR = 2200


def server_url(explicit: str | None = None) -> str:
    """``--url``, else ``NPU_PROXY_URL``, else the local server on ``NPU_PROXY_PORT``."""
    url = explicit or os.environ.get("NPU_PROXY_URL")
    if not url:
        url = f"http://127.0.0.1:{os.environ.get('NPU_PROXY_PORT') or DEFAULT_PORT}"
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


class ServerError(click.ClickException):
    """A failure reported by (or about) the server; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(ServerError):
    """No connection to the server, or it was lost: every further request fails alike."""


class ServerClient:
    """The Ollama API of one npu-proxy server, with its errors as :class:`ServerError`."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=_QUICK)

    @classmethod
    def from_options(cls, url: str | None) -> ServerClient:
        return cls(server_url(url), os.environ.get("NPU_PROXY_API_KEY") or None)

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ServerUnreachable(
                f"could not connect to npu-proxy at {self.url}: is it running? "
                "start it with `npu-proxy serve`"
            ) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"lost the connection to npu-proxy at {self.url} ({type(exc).__name__})"
            ) from None

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.is_success:
            return
        response.read()
        try:
            message = str(response.json().get("error") or "")
        except (ValueError, AttributeError):
            message = ""
        message = message or f"the server answered {response.status_code}"
        if response.status_code == 401:
            message += " (set NPU_PROXY_API_KEY to the server's key)"
        raise ServerError(message, response.status_code)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the JSON reply (None for an empty body)."""
        with self._errors():
            response = self._http.request(method, path, json=body)
        self._check(response)
        return response.json() if response.content else None

    @contextlib.contextmanager
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[Iterator[dict[str, Any]]]:
        """A streamed POST as its NDJSON objects; an ``{"error": ...}`` line raises.

        Leaving the ``with`` block closes the connection, which makes the server stop
        (a generation is cancelled, a pull removes its partial files).
        """
        with (
            self._errors(),
            self._http.stream("POST", path, json=body, timeout=_STREAMED) as response,
        ):
            self._check(response)

            def objects() -> Iterator[dict[str, Any]]:
                with self._errors():
                    for text in response.iter_lines():
                        if not text.strip():
                            continue
                        item = json.loads(text)
                        if "error" in item:
                            raise ServerError(str(item["error"]))
                        yield item

            yield objects()


# --- formatting ------------------------------------------------------------------------


def human_bytes(size: int | float) -> str:
    """Decimal units as Ollama prints them: ``512 B``, ``4.7 GB``, ``274 MB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds allowed); None if it cannot be read."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _span(seconds: float) -> str:
    """A duration in words: ``2 minutes``, ``About an hour``, ``3 days``."""
    for limit, size, one, many in (
        (60, 1, "1 second", "seconds"),
        (3600, 60, "About a minute", "minutes"),
        (86400, 3600, "About an hour", "hours"),
        (86400 * 14, 86400, "1 day", "days"),
        (86400 * 60, 86400 * 7, "1 week", "weeks"),
        (86400 * 730, 86400 * 30, "1 month", "months"),
        (float("inf"), 86400 * 365, "1 year", "years"),
    ):
        if seconds < limit:
            count = int(seconds // size)
            return one if count <= 1 else f"{count} {many}"
    raise AssertionError("unreachable")


def human_ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "unknown"
    seconds = (now - moment).total_seconds()
    return "Less than a second ago" if seconds < 1 else f"{_span(seconds)} ago"


def human_until(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    if moment.year >= _FOREVER_YEAR:
        return "Forever"
    seconds = (moment - now).total_seconds()
    return "Stopping..." if seconds < 1 else f"{_span(seconds)} from now"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by at least four spaces, like ``ollama list``."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "    ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# --- pull progress ---------------------------------------------------------------------


class PullDisplay:
    """Shows pull progress: on a terminal one redrawn bar per file with speed and ETA;
    otherwise one line per file and phase, so logs and pipes are not flooded."""

    def __init__(
        self,
        out: TextIO,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        self._status = ""
        self._drawn = False  # a bar line is open (no newline yet)
        self._start: tuple[float, int] = (0.0, 0)
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "█▕▏".encode(encoding)
            self._full, self._edges = "█", ("▕", "▏")
        except (UnicodeEncodeError, LookupError):
            self._full, self._edges = "#", ("[", "]")

    def update(self, message: dict[str, Any]) -> None:
        status = str(message.get("status", ""))
        total = message.get("total")
        completed = int(message.get("completed") or 0)
        if message.get("digest") and isinstance(total, int) and total > 0:
            self._file(status, total, completed)
            return
        if status != self._status:
            self._end_line()
            self._write(status + "\n")
            self._status = status

    def close(self) -> None:
        self._end_line()

    def _file(self, status: str, total: int, completed: int) -> None:
        now = self.clock()
        if status != self._status:
            self._end_line()
            self._status = status
            self._start = (now, completed)
            if not self.tty:
                self._write(f"{status} ({human_bytes(total)})\n")
        if self.tty:
            self._write("\r" + self.bar_line(status, total, completed, now) + "\x1b[K")
            self._drawn = True

    def bar_line(self, status: str, total: int, completed: int, now: float) -> str:
        """``pulling 1a2b3c4d5e6f  45% ▕████    ▏ 120 MB/265 MB  12 MB/s  12s``."""
        started, base = self._start
        elapsed = now - started
        speed = (completed - base) / elapsed if elapsed > 0 else 0.0
        rate = f"{human_bytes(speed)}/s" if speed > 0 else ""
        if completed >= total:
            eta = ""
        elif speed > 0:
            eta = _clock((total - completed) / speed)
        else:
            eta = "?"
        percent = f"{100 * completed // total:3d}%"
        amounts = f"{human_bytes(completed)}/{human_bytes(total)}"
        tail = "  ".join(p for p in (amounts, rate, eta) if p)
        room = self.width - len(status) - len(percent) - len(tail) - 8
        cells = max(10, min(room, 50))
        filled = cells * completed // total
        bar = self._edges[0] + self._full * filled + " " * (cells - filled) + self._edges[1]
        return f"{status} {percent} {bar} {tail}"

    def _end_line(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def _clock(seconds: float) -> str:
    """``42s``, ``3m12s``, ``1h05m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# --- the commands ----------------------------------------------------------------------

url_option = click.option(
    "--url",
    metavar="URL",
    help=f"Server URL [NPU_PROXY_URL, default http://127.0.0.1:$NPU_PROXY_PORT "
    f"(port {DEFAULT_PORT})].",
)


@contextlib.contextmanager
def _client(url: str | None) -> Iterator[ServerClient]:
    client = ServerClient.from_options(url)
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


def _section(title: str, rows: Sequence[tuple[str, str]] | Sequence[str]) -> list[str]:
    lines = [f"  {title}"]
    for row in rows:
        if isinstance(row, tuple):
            lines.append(f"    {row[0]:<20}{row[1]}")
        else:
            lines.append(f"    {row}")
    return [*lines, ""]


def describe_model(shown: dict[str, Any]) -> str:
    """``npu-proxy show``'s text: model facts, capabilities, parameters, license."""
    details = shown.get("details") or {}
    info = shown.get("model_info") or {}
    arch = str(info.get("general.architecture") or details.get("family") or "")
    facts = [
        ("architecture", arch),
        ("parameters", str(details.get("parameter_size") or "")),
        ("context length", str(info.get(f"{arch}.context_length") or "")),
        ("embedding length", str(info.get(f"{arch}.embedding_length") or "")),
        ("quantization", str(details.get("quantization_level") or "")),
        ("format", str(details.get("format") or "")),
    ]
    lines = ["", *_section("Model", [(k, v) for k, v in facts if v])]
    if shown.get("capabilities"):
        lines += _section("Capabilities", [str(c) for c in shown["capabilities"]])
    parameters = str(shown.get("parameters") or "").strip()
    if parameters:
        lines += _section("Parameters", parameters.splitlines())
    license_text = str(shown.get("license") or "").strip()
    if license_text:
        lines += _section("License", license_text.splitlines()[:2])
    return "\n".join(lines)


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


HELP = """Available commands:
  /clear          Forget the conversation so far
  /bye            Exit
  /?, /help       This help
  Ctrl-D          Exit
  Ctrl-C          Stop the reply being written

Use \"\"\" to begin and end a message of several lines.
"""


class Spinner:
    """A one-line spinner with the seconds elapsed, on stderr when it is a terminal
    (nothing otherwise); the line is wiped when the ``with`` block ends."""

    FRAMES = "|/-\\"

    def __init__(self, text: str, stream: TextIO | None = None) -> None:
        self.text = text
        self.stream = stream or sys.stderr
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def __enter__(self) -> Spinner:
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def _spin(self) -> None:
        started = time.monotonic()
        frame = 0
        while not self._done.wait(0 if frame == 0 else 0.1):
            elapsed = time.monotonic() - started
            line = f"{self.FRAMES[frame % len(self.FRAMES)]} {self.text}"
            if elapsed >= 1:
                line += f" ({elapsed:.0f} s)"
            self._width = max(self._width, len(line))
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
            frame += 1


class ChatSession:
    """A conversation with one model: the history and the streamed replies."""

    def __init__(self, client: ServerClient, model: str) -> None:
        self.client = client
        self.model = model
        self.history: list[dict[str, str]] = []

    def check_model(self) -> None:
        """Fail early, with a hint, for a model that is missing or cannot chat."""
        try:
            shown = self.client.call("POST", "/api/show", {"model": self.model})
        except ServerError as exc:
            if exc.status == 404:
                raise ServerError(
                    f"{exc.message}: see `npu-proxy list`, or get it with "
                    f"`npu-proxy pull {self.model}`",
                    404,
                ) from None
            raise
        capabilities = shown.get("capabilities") or []
        if capabilities and "completion" not in capabilities:
            raise ServerError(f"'{self.model}' is an embedding model: it cannot chat")

    def load(self) -> None:
        """Have the server load the model now (an empty generate, as ``ollama run``
        does), with a spinner on a terminal: a first compile can take a while."""
        with Spinner(f"loading {self.model}"), self.client.stream(
                "/api/generate", {"model": self.model}) as lines:
            for _ in lines:
                pass

    def say(self, text: str) -> None:
        """Send ``text`` as the user's turn and stream the reply to stdout.

        The turn joins the history only when the reply completes, so a failed or
        interrupted one can be asked again.
        """
        messages = [*self.history, {"role": "user", "content": text}]
        body = {"model": self.model, "messages": messages, "stream": True}
        reply: list[str] = []
        out = sys.stdout
        try:
            with self.client.stream("/api/chat", body) as chunks:
                for chunk in chunks:
                    piece = str((chunk.get("message") or {}).get("content") or "")
                    if piece:
                        reply.append(piece)
                        out.write(piece)
                        out.flush()
        finally:
            out.write("\n")
            out.flush()
        self.history = [*messages, {"role": "assistant", "content": "".join(reply)}]

    def command(self, text: str) -> bool:
        """Handle a ``/`` command; False when the chat should end."""
        word = text.split()[0].lower()
        if word in ("/bye", "/exit"):
            return False
        if word == "/clear":
            self.history = []
            click.echo("Cleared session context")
        elif word in ("/?", "/help"):
            click.echo(HELP)
        else:
            click.echo(f"Unknown command '{word}'. Type /? for help")
        return True

    def turn(self, text: str) -> bool:
        """One line from the user (a message or a command); False to end the chat."""
        text = text.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self.command(text)
        try:
            self.say(text)
        except ServerUnreachable:
            raise
        except ServerError as exc:
            click.echo(f"Error: {exc.message}", err=True)
        return True

    def interactive(self) -> None:
        """The terminal chat: ``>>>`` prompts with line editing, until /bye or Ctrl-D."""
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (gives input() history and line editing)
        click.echo("Send a message (/? for help)")
        while True:
            try:
                text = self._read_message()
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                click.echo("\nUse Ctrl + d or /bye to exit.")
                continue
            try:
                if not self.turn(text):
                    return
            except KeyboardInterrupt:
                click.echo()  # the reply was stopped; the chat goes on
            click.echo()

    @staticmethod
    def _read_message() -> str:
        text = input(">>> ")
        if not text.lstrip().startswith('"""'):
            return text
        # A message of several lines, between triple quotes.
        lines = [text.lstrip()[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            lines.append(input("... "))
        lines[-1] = lines[-1].rstrip()[:-3]
        return "\n".join(lines)

    def from_lines(self, stream: TextIO) -> None:
        """A chat read from a pipe or file: one message per line, no prompts."""
        for text in stream:
            if not self.turn(text):
                return


def _alias(command: click.Command, name: str) -> click.Command:
    return click.Command(
        name,
        callback=command.callback,
        params=command.params,
        help=f"Alias of {command.name}.",
        short_help=f"Alias of {command.name}.",
    )


ls = _alias(list_models, "ls")

#: The model commands, for ``for command in COMMANDS: main.add_command(command)``.
COMMANDS: tuple[click.Command, ...] = (pull, list_models, ls, show, rm, cp, ps, create, run)

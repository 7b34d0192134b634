"""``npu-proxy run``'s chat: the conversation, its ``/`` commands and the load spinner."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TextIO

import click

from .cli_client import ServerClient, ServerError, ServerUnreachable

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

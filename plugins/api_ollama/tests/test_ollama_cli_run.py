"""``npu-proxy run``: the chat driven through stdin and through a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import MockBackend
from npu_proxy_mock.testing import single_device_app
from npu_proxy_ollama.cli import run


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(make_app(test_settings(tmp_path), ["mock", "ollama"])) as live:
        yield live


def prompts(server: LiveServer) -> list[str]:
    """The prompts that reached the simulated device, in order."""
    return list(server.ctx.engine.backends["MOCK"].counters.prompts)


def test_a_chat_from_stdin_keeps_history_until_clear_and_bye(server: LiveServer) -> None:
    stdin = "first question\n\nsecond question\n/clear\nthird question\n/bye\nnever sent\n"
    result = CliRunner().invoke(run, ["mock", "--url", server.url], input=stdin)
    assert result.exit_code == 0, result.output
    assert "Cleared session context" in result.output
    assert ">>>" not in result.output  # no prompts when stdin is not a terminal
    sent = prompts(server)
    assert len(sent) == 3
    assert "first question" in sent[1] and "second question" in sent[1]
    assert "third question" in sent[2] and "first question" not in sent[2]
    assert not any("never sent" in p for p in sent)


def test_end_of_input_ends_the_chat(server: LiveServer) -> None:
    result = CliRunner().invoke(run, ["mock", "--url", server.url], input="only one\n")
    assert result.exit_code == 0
    assert len(prompts(server)) == 1


def test_unknown_commands_are_answered_and_nothing_is_sent(server: LiveServer) -> None:
    result = CliRunner().invoke(run, ["mock", "--url", server.url], input="/nope\n/?\n")
    assert "Unknown command '/nope'. Type /? for help" in result.output
    assert "/clear" in result.output and prompts(server) == []


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty (so that
    Ctrl-C and Ctrl-D act on it as in a real terminal)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pseudo-terminal: type into it and read what it shows."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            preexec_fn=_own_terminal,
        )
        os.close(slave)
        self.screen = ""

    def read_until(self, text: str, start: int = 0) -> str:
        """Everything shown until ``text`` appears after ``start`` (the bound only stops
        a hung test)."""
        deadline = time.monotonic() + 30
        while text not in self.screen[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen: {self.screen!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.screen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        return self.screen

    def wait_for_reading(self) -> None:
        """Wait until the child is blocked reading the terminal.

        A key that raises a signal (Ctrl-C) must arrive then: CPython's ``input()``
        checks for signals only when its ``select`` is interrupted, so a SIGINT that
        lands between drawing the prompt and entering ``select`` waits for the next
        key. No person types that fast; a test does."""
        deadline = time.monotonic() + 30
        syscall = Path(f"/proc/{self.process.pid}/syscall")
        while time.monotonic() < deadline:
            if syscall.read_text().split(" ", 1)[0] in {"7", "23", "270"}:  # poll, select, pselect6
                return
            time.sleep(0.01)
        raise AssertionError("the chat never waited for a key")

    def type(self, keys: str) -> int:
        """Type ``keys``; returns the screen position before them."""
        position = len(self.screen)
        os.write(self.master, keys.encode())
        return position

    def close(self) -> int:
        code = self.process.wait(timeout=30)
        os.close(self.master)
        return code


def _argv(model: str) -> list[str]:
    """``npu-proxy run MODEL``: the core command line finds ``run`` through the plugin."""
    return [sys.executable, "-m", "npu_proxy", "--plugins", "ollama", "run", model]


def test_an_interactive_chat_in_a_terminal(server: LiveServer) -> None:
    env = {**os.environ, "NPU_PROXY_URL": server.url, "TERM": "dumb"}
    env.pop("NPU_PROXY_API_KEY", None)
    term = Terminal(_argv("mock"), env)
    try:
        term.read_until(">>> ")
        start = term.type("hello there\n")
        term.read_until(">>> ", start + len("hello there"))
        term.wait_for_reading()
        start = term.type("\x03")  # Ctrl-C at the prompt does not leave
        term.read_until("Use Ctrl + d or /bye to exit.", start)
        start = term.type("and again\n")
        term.read_until(">>> ", start + len("and again"))
        start = term.type('"""line one\nline two"""\n')
        term.read_until(">>> ", start + len("line two"))
        term.type("/bye\n")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()
    assert "Send a message (/? for help)" in term.screen
    sent = prompts(server)
    assert len(sent) == 3
    assert "hello there" in sent[1] and "and again" in sent[1]
    assert "line one\nline two" in sent[2]


def test_ctrl_d_leaves_the_terminal_chat(server: LiveServer) -> None:
    env = {**os.environ, "NPU_PROXY_URL": server.url, "TERM": "dumb"}
    env.pop("NPU_PROXY_API_KEY", None)
    term = Terminal(_argv("mock"), env)
    try:
        term.read_until(">>> ")
        term.wait_for_reading()
        term.type("\x04")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()
    assert prompts(server) == []


def test_run_loads_the_model_before_the_first_message(server: LiveServer) -> None:
    result = CliRunner().invoke(run, ["mock", "--url", server.url], input="")
    assert result.exit_code == 0, result.output
    assert "loading" not in result.output  # no spinner when nothing is a terminal
    assert [r.info.name for r in server.ctx.engine.lifecycle.residents()] == ["mock:latest"]
    assert prompts(server) == []  # loaded by an empty generate, not by a message


def test_a_slow_load_shows_a_spinner_in_the_terminal(tmp_path: Path) -> None:
    backend = MockBackend(load_delay=1.5)
    with LiveServer(single_device_app(tmp_path, backend, ["ollama"])) as slow:
        env = {**os.environ, "NPU_PROXY_URL": slow.url, "TERM": "dumb"}
        env.pop("NPU_PROXY_API_KEY", None)
        term = Terminal(_argv("mock"), env)
        try:
            screen = term.read_until(">>> ")
            assert backend.counters.loads == 1
            term.type("/bye\n")
            assert term.close() == 0
        finally:
            if term.process.poll() is None:
                term.process.kill()
    assert "loading mock (1 s)" in screen
    assert screen.index("loading mock") < screen.index("Send a message")

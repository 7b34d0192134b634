"""Shared pieces of the bench scripts: a server subprocess, streaming clients, statistics.

Not a benchmark itself. The scripts import it as ``benchlib`` (Python puts the script's
own folder, ``bench/``, first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from npu_proxy_openvino.bench.records import table as text_table

LLM = "smollm2:135m"
EMBEDDING = "all-minilm:latest"

#: Distinct prompts that make SmolLM2 write at length (greedy), so 128 tokens are
#: usually generated before an end-of-sequence token.
PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail why the sky is blue, for a curious ten-year-old.",
    "Describe, step by step, how bread is made from wheat in the field to the table.",
    "Write a detailed essay about the history of the bicycle.",
    "List twenty tips for learning a new language, with an explanation for each.",
    "Describe a walk through a busy market in a city you imagine, in rich detail.",
    "Explain how a computer works, from the transistor to the operating system.",
    "Write a long letter from a sailor to his family about a year at sea.",
)


def default_store() -> Path:
    """The model store the bench uses: ``$NPU_PROXY_BENCH_STORE`` or a cache folder.

    Kept between runs so the one-time GGUF->IR conversion is paid once (startup.py
    makes fresh stores of its own for cold starts).
    """
    given = os.environ.get("NPU_PROXY_BENCH_STORE")
    if given:
        return Path(given).expanduser()
    return Path("~/.cache/npu-proxy/bench-models").expanduser()


def machine() -> str:
    """One line describing where the figures come from."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.node()}: {os.cpu_count()} logical CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}, load average {load:.2f} at start")


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command() -> list[str]:
    """How users start the server: the ``npu-proxy`` script next to this interpreter
    (``python -m npu_proxy`` if there is none)."""
    script = shutil.which("npu-proxy", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "npu_proxy"]


class ServerProcess:
    """``npu-proxy serve`` on a free loopback port, as a context manager.

    ``started`` is the ``time.perf_counter()`` just before the process was spawned, so
    callers can time start-up from it. The server's output goes to a log file
    (``log_path``) that is shown if the server dies. Exiting stops the process with
    SIGTERM (SIGKILL after 20 s).
    """

    def __init__(self, store: Path, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = ()) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "NPU_PROXY_MODEL_PATH": str(store),
            "NPU_PROXY_REAL_INFERENCE": "1",
            "NPU_PROXY_WARMUP": "0",
            "NPU_PROXY_KEEP_ALIVE": "-1",  # nothing unloads in the middle of a run
            "NPU_PROXY_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.args = [*server_command(), "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), *args]
        handle, name = tempfile.mkstemp(prefix="npu-proxy-bench-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self._files = contextlib.ExitStack()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> ServerProcess:
        log = self._files.enter_context(self.log_path.open("wb"))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self._files.close()
        if exc is None:
            self.log_path.unlink(missing_ok=True)
        else:
            print(f"server log kept at {self.log_path}", file=sys.stderr)

    def stop(self) -> None:
        """Stop the server process (ours only) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def check_alive(self) -> None:
        """Raise with the server's log if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}:\n"
                               + self.log_path.read_text()[-3000:])

    def wait_healthy(self, status: str | None = "ok", timeout: float = 300) -> float:
        """Poll ``/health`` until it answers 200 (and ``status`` when given).

        Returns seconds since the process was spawned.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    response = client.get(self.url + "/health")
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                if response.status_code == 200 and (
                        status is None or response.json().get("status") == status):
                    return time.perf_counter() - self.started
                time.sleep(0.01)
        raise TimeoutError(f"/health did not say {status!r} within {timeout} s")


@dataclass
class StreamResult:
    """One streamed generation as the client saw it (perf_counter seconds)."""

    sent: float
    first: float
    end: float
    tokens: int

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first piece (what a reader of the stream sees)."""
        span = self.end - self.first
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")


def chat_body(prompt: str, tokens: int, keep_alive: Any = -1) -> dict[str, Any]:
    """An Ollama ``/api/chat`` streaming request: greedy, ``tokens`` at most."""
    return {
        "model": LLM,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "options": {"temperature": 0, "num_predict": tokens},
        "keep_alive": keep_alive,
    }


async def stream_chat(client: httpx.AsyncClient, url: str, prompt: str, tokens: int,
                      sent: float | None = None) -> StreamResult:
    """Stream one ``/api/chat`` request; the token count is the server's ``eval_count``.

    ``sent`` is the moment the request counts as issued (default: now).
    """
    sent = time.perf_counter() if sent is None else sent
    first = 0.0
    count = 0
    async with client.stream("POST", url + "/api/chat",
                             json=chat_body(prompt, tokens)) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"/api/chat answered {response.status_code}: "
                               f"{response.text[:300]}")
        async for line in response.aiter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(f"/api/chat streamed an error: {chunk['error']}")
            if not first and chunk.get("message", {}).get("content"):
                first = time.perf_counter()
            if chunk.get("done"):
                count = int(chunk.get("eval_count", 0))
    end = time.perf_counter()
    return StreamResult(sent, first or end, end, count)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A plain text table: the first ``left`` columns left-aligned, the rest right-aligned
    (the one ``npu-proxy bench`` prints)."""
    return text_table([str(h) for h in headers], ([str(c) for c in row] for row in rows),
                      left=left)

"""``npu-proxy bench`` in a terminal: the progress bar while it runs, and Ctrl-C stops it
cleanly with the partial results printed (a real process on a pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import Settings

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_until(fd: int, seen: bytearray, pattern: re.Pattern[str], timeout: float) -> bool:
    """Read ``fd`` into ``seen`` until ``pattern`` matches its text or ``timeout`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern.search(ANSI.sub("", seen.decode(errors="replace"))):
            return True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the process closed the terminal
                return bool(pattern.search(ANSI.sub("", seen.decode(errors="replace"))))
            if not chunk:
                break
            seen.extend(chunk)
    return bool(pattern.search(ANSI.sub("", seen.decode(errors="replace"))))


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_the_progress_bar_shows_and_ctrl_c_prints_the_partial_results(
    ov_settings: Settings, smollm2: ModelInfo
) -> None:
    script = shutil.which("npu-proxy", path=str(Path(sys.executable).parent))
    assert script is not None
    env = {**os.environ, "NPU_PROXY_MODEL_PATH": str(ov_settings.model_path),
           "NPU_PROXY_CONTINUOUS_BATCHING": "0",  # one LLMPipeline: the quickest load
           "COLUMNS": "160", "TERM": "xterm"}
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [script, "--plugins", "openvino,openvino-cpu", "bench", "--device", "CPU",
         "--prompt", "64", "--gen", "16", "--reps", "500"],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        # the bar is drawn, and its counter shows requests done: the first rep is in
        bar = re.compile(r"pp64 tg16 x1 rep \d+.*\s([4-9]|\d\d+)/\d+")
        assert read_until(master, seen, bar, timeout=180), seen.decode(errors="replace")
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        read_until(master, seen, re.compile(r"(?!)"), timeout=60)  # to the end
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = ANSI.sub("", seen.decode(errors="replace"))
    assert "Traceback" not in text
    assert "interrupted (Ctrl-C): the results above are partial" in text
    [row] = [line for line in text.splitlines() if line.startswith("CPU ") and "pp64" in line]
    measured = int(row.split()[-1])
    assert 1 <= measured < 500  # what finished before the interruption

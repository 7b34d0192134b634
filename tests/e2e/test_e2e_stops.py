"""A stop with streams open: each ends with its dialect's final error event, no traceback.

A real ``npu-proxy serve`` process (the mock backend, slow tokens, a one-second grace)
gets SIGTERM while an Ollama, two OpenAI (chat and legacy completions), an OpenAI
Responses and an Anthropic stream are running, read through raw httpx streaming, and
a request that still waits for a device is answered 503.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.testing import free_port, wait_healthy

STREAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "ollama": ("/api/chat", {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}),
    "openai_chat": ("/v1/chat/completions", {
        "model": "mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    "openai_completions": ("/v1/completions", {
        "model": "mock", "stream": True, "prompt": "hi", "max_tokens": 64}),
    "openai_responses": ("/v1/responses", {"model": "mock", "stream": True, "input": "hi"}),
    "anthropic": ("/v1/messages", {
        "model": "mock", "stream": True, "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]}),
}


class Reader(threading.Thread):
    """Reads one stream to its end; records its lines, and whether the body ended
    properly (no protocol error: it was not cut mid-chunk)."""

    def __init__(self, url: str, path: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, body
        self.lines: list[str] = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + self.path, json=self.body,
                              timeout=60) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()


def sse_events(lines: list[str]) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) for each ``data:`` line, with the ``event:`` before it."""
    events: list[tuple[str | None, Any]] = []
    name: str | None = None
    for line in lines:
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return events


@pytest.mark.timeout(180)
def test_sigterm_ends_every_open_stream_with_its_dialect_s_error_event(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    env |= {"NPU_PROXY_REAL_INFERENCE": "0", "NPU_PROXY_SHUTDOWN_GRACE": "1",
           "NPU_PROXY_MOCK_TOKEN_DELAY": "1", "NPU_PROXY_MAX_PARALLEL": "5",
           "NPU_PROXY_MODEL_PATH": str(tmp_path / "models"), "NPU_PROXY_LOG_LEVEL": "INFO"}
    process = subprocess.Popen(
        [sys.executable, "-m", "npu_proxy", "--plugins", "mock,ollama,openai,anthropic",
         "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url)
        readers = {name: Reader(url, path, body) for name, (path, body) in STREAMS.items()}
        for reader in readers.values():
            reader.start()
        for name, reader in readers.items():
            assert reader.started.wait(60), name
            assert reader.error is None, (name, reader.error)
        # the five streams hold the mock's five slots: this one waits for a device
        waiting: list[httpx.Response] = []
        queued = threading.Thread(target=lambda: waiting.append(httpx.post(
            url + "/v1/chat/completions", timeout=60,
            json={"model": "mock", "messages": [{"role": "user", "content": "later"}]})))
        queued.start()
        while httpx.get(url + "/health", timeout=5).json()["devices"]["MOCK"]["queue_depth"] < 1:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        for reader in readers.values():
            reader.join(60)
        queued.join(60)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in err, err
    assert waiting[0].status_code == 503  # not answered yet: a clean refusal
    assert waiting[0].json()["error"]["message"] == "the server is stopping"
    for name, reader in readers.items():
        assert reader.error is None, (name, repr(reader.error))  # ended, not cut
    ollama = [json.loads(line) for line in readers["ollama"].lines]
    assert ollama[-1] == {"error": "the server is stopping"}
    assert not any(line.get("done") for line in ollama)
    for name in ("openai_chat", "openai_completions"):
        events = sse_events(readers[name].lines)
        assert events[-1][1]["error"]["message"] == "the server is stopping", name
        assert len(events) > 1, name  # it streamed before the stop
    responses = sse_events(readers["openai_responses"].lines)
    assert [name for name, _ in responses[-2:]] == ["error", "response.failed"]
    assert responses[-1][1]["response"]["status"] == "failed"
    anthropic = sse_events(readers["anthropic"].lines)
    assert anthropic[-1][0] == "error"
    assert anthropic[-1][1]["error"]["message"] == "the server is stopping"
    assert not any(name == "message_stop" for name, _ in anthropic)

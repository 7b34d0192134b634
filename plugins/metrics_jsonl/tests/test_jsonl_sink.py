"""The JSON-lines sink: one line per event, in order, through a live server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.app import StartupError
from npu_proxy.engine.events import QueueChanged
from npu_proxy.engine.types import GenerationRequest, Message
from npu_proxy.testing import LiveServer, RecordingSink, make_app, test_settings
from npu_proxy_jsonl import JsonlSink, event_record


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def generate(ctx: Any) -> int:
    request = GenerationRequest(model="mock", messages=(Message("user", "hi"),))
    async with await ctx.engine.generate(request) as generation:
        async for _ in generation:
            pass
    assert generation.done is not None
    return generation.done.usage.completion_tokens


def test_every_event_of_a_live_server_becomes_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("NPU_PROXY_JSONL_PATH", str(path))
    monkeypatch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0")
    recording = RecordingSink()
    app = make_app(
        test_settings(tmp_path),
        ["mock", "jsonl"],
        inline={"recording": recording.plugin()},
    )
    with LiveServer(app) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        tokens = server.call(generate(server.ctx))
    # Shutdown closed the sink, which wrote every line it was handed.
    lines = read_lines(path)
    assert len(lines) == len(recording.events) > 0
    assert [line["event"] for line in lines] == [
        event_record(e)["event"] for e in recording.events
    ]
    for line, event in zip(lines, recording.events, strict=True):
        expected = json.loads(json.dumps(event_record(event)))
        assert {k: v for k, v in line.items() if k != "time"} == {
            k: v for k, v in expected.items() if k != "time"
        }
        assert line["time"].endswith("+00:00")
    events = {line["event"] for line in lines}
    assert {"request_completed", "route_decided", "first_token", "generation_finished",
            "model_loaded", "queue_changed"} <= events
    finished = next(line for line in lines if line["event"] == "generation_finished")
    assert finished["model"] == "mock:latest"
    assert finished["completion_tokens"] == tokens
    assert isinstance(finished["inter_token_latencies"], list)
    health = next(line for line in lines if line["event"] == "request_completed")
    assert (health["endpoint"], health["status"]) == ("/health", 200)


def test_not_registered_without_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NPU_PROXY_JSONL_PATH", raising=False)
    app = make_app(test_settings(tmp_path), ["mock", "jsonl"])
    assert not any(isinstance(s, JsonlSink) for s in app.state.ctx.bus.sinks)
    monkeypatch.setenv("NPU_PROXY_JSONL_PATH", "  ")
    app = make_app(test_settings(tmp_path), ["mock", "jsonl"])
    assert not any(isinstance(s, JsonlSink) for s in app.state.ctx.bus.sinks)


def test_an_unwritable_path_is_a_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_JSONL_PATH", str(tmp_path / "missing" / "events.jsonl"))
    with pytest.raises(StartupError, match="NPU_PROXY_JSONL_PATH"):
        make_app(test_settings(tmp_path), ["mock", "jsonl"])


def test_lines_are_appended_and_close_is_final(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event":"earlier"}\n', "utf-8")
    sink = JsonlSink(path)
    sink.handle(QueueChanged("NPU", 2, 1))
    sink.close()
    sink.handle(QueueChanged("NPU", 0, 0))  # after close: dropped, no error
    sink.close()
    lines = read_lines(path)
    assert [line["event"] for line in lines] == ["earlier", "queue_changed"]
    assert (lines[1]["device"], lines[1]["waiting"], lines[1]["in_flight"]) == ("NPU", 2, 1)


FULL = Path("/dev/full")  # every write fails with ENOSPC


def wait_until(check: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_a_full_disk_is_reported_once_and_the_queue_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from npu_proxy.engine.events import EventBus

    sink = JsonlSink(FULL, queue_size=4, retry_after=3600)
    bus = EventBus([sink])
    bus.emit(QueueChanged("NPU", 1, 0))
    wait_until(lambda: bus.failures.get("jsonl", 0) == 1)
    for i in range(1000):  # the writer has failed: events are dropped, not queued
        bus.emit(QueueChanged("NPU", i, 0))
        assert sink.queued <= 4
    assert bus.failures == {"jsonl": 1}
    assert bus.dropped == {"jsonl": 1001}
    assert bus.status() == {"jsonl": {"failures": 1, "dropped": 1001}}
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    assert errors[0].exc_info is None
    sink.close()  # returns: the writer is alive and drains


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_a_writer_that_keeps_failing_retries_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from npu_proxy.engine.events import EventBus

    sink = JsonlSink(FULL, queue_size=2, retry_after=0)  # retry every batch
    bus = EventBus([sink])
    for i in range(200):
        bus.emit(QueueChanged("NPU", i, 0))
        assert sink.queued <= 2
    sink.close()
    failures, dropped = bus.failures["jsonl"], bus.dropped["jsonl"]
    # every event either failed to be written or found the queue full
    assert failures >= 1 and dropped == 200
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_a_server_whose_sink_writes_to_a_full_disk_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_JSONL_PATH", str(FULL))
    monkeypatch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0")
    app = make_app(test_settings(tmp_path), ["mock", "jsonl"])
    with LiveServer(app) as server:
        for _ in range(3):
            assert server.call(generate(server.ctx)) > 0
        wait_until(lambda: server.ctx.bus.failures.get("jsonl", 0) >= 1)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 200
        sinks = health.json()["metrics_sinks"]
        assert sinks["jsonl"]["failures"] >= 1 and sinks["jsonl"]["dropped"] > 0
        assert server.call(generate(server.ctx)) > 0  # still serving


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_writing_resumes_once_the_disk_has_room_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from npu_proxy.engine.events import EventBus

    sink = JsonlSink(FULL, retry_after=0.05)
    bus = EventBus([sink])
    bus.emit(QueueChanged("NPU", 1, 0))
    wait_until(lambda: bus.failures.get("jsonl", 0) == 1)
    # The disk has room again: the sink's descriptor now reaches a real file.
    target = tmp_path / "events.jsonl"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, sink._file.fileno())
    os.close(fd)
    wait_until(lambda: bus.emit(QueueChanged("NPU", 2, 0)) or target.stat().st_size > 0)
    sink.close()
    lines = read_lines(target)
    assert lines and all(line["waiting"] == 2 for line in lines)
    assert bus.failures == {"jsonl": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert any("recovered writing" in m for m in messages)

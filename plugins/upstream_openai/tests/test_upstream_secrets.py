"""An upstream's API key reaches the engine and nothing else: not a log line, an error,
a metrics event or ``/health`` (sentinel test)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from npu_proxy.testing import LiveServer, RecordingSink, make_app, test_settings
from npu_proxy_upstream.testing import FakeEngine, probed, upstream_table, wait_until

SENTINEL = "sk-SENTINEL-7f3a9c"
CHAT = [{"role": "user", "content": "hello"}]


def test_the_key_is_sent_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = FakeEngine(key=SENTINEL)
    sink = RecordingSink()
    with LiveServer(engine.app()) as live:
        good = upstream_table("lab", live.url + "/v1", api_key_env="LAB_KEY", failures=1)
        bad = upstream_table("wrong", live.url + "/v1", api_key_env="WRONG_KEY",
                             prefix="wrong/")
        (tmp_path / "upstreams.toml").write_text(good + bad, "utf-8")
        monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(tmp_path / "upstreams.toml"))
        monkeypatch.setenv("LAB_KEY", SENTINEL)
        monkeypatch.setenv("WRONG_KEY", SENTINEL + "-revoked")
        app = make_app(test_settings(tmp_path), ["openai", "upstream"],
                       {"sink": sink.plugin()})
        with LiveServer(app) as server:
            wait_until(lambda: probed(server.url))
            seen = []
            ok = httpx.post(server.url + "/v1/chat/completions", timeout=10,
                            json={"model": "fake-chat", "messages": CHAT})
            assert ok.status_code == 200
            engine.busy = 3
            seen.append(httpx.post(server.url + "/v1/chat/completions", timeout=10,
                                   json={"model": "fake-chat", "messages": CHAT}))
            engine.busy = None
            engine.models = ()  # refuses every model: the engine's 404 message comes back
            seen.append(httpx.post(server.url + "/v1/embeddings", timeout=10,
                                   json={"model": "fake-embed", "input": "x"}))
            engine.stall = 0.0
            for path in ("/health", "/health/devices", "/v1/models"):
                seen.append(httpx.get(server.url + path, timeout=10))
            assert [r.status_code for r in seen[:2]] == [503, 400]
        assert engine.authorizations.count(f"Bearer {SENTINEL}") >= 2
    texts = [r.text + str(r.headers) for r in seen]
    texts += [record.getMessage() + str(record.exc_info) for record in caplog.records]
    texts += [repr(event) for event in sink.events]
    assert all(SENTINEL not in text for text in texts)
    assert any("wrong" in text and "API key" in text for text in texts)

"""``POST /api/pull`` from a local hub through the official client: progress, errors, use."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import ollama
import pytest
from npu_proxy.hub.pull import Puller, PullProgress
from npu_proxy.testing import LiveServer
from npu_proxy.testing_hub import FakeHub, HubFile

#: An OpenVINO IR repository as the hub lists it (the mock backend serves any model).
IR_REPO = {
    "openvino_model.xml": HubFile(b"<net/>" * 100, lfs=False),
    "openvino_model.bin": HubFile(bytes(range(256)) * 2_000),
    "openvino_tokenizer.bin": HubFile(b"\7" * 70_000),
    "config.json": HubFile(
        json.dumps({"model_type": "llama", "max_position_embeddings": 2048}).encode(),
        lfs=False,
    ),
}


@dataclass
class ServedHub(FakeHub):
    """A fake hub and the URL it is served at."""

    url: str = ""


@pytest.fixture
def hub() -> Iterator[ServedHub]:
    fake = ServedHub(repos={"org/tiny-ov": dict(IR_REPO)})
    with fake.serve() as served:
        fake.url = served.url
        yield fake


@pytest.fixture
def hub_server(start: Callable[..., LiveServer], hub: ServedHub) -> LiveServer:
    """A server whose puller downloads from ``hub``."""
    server = start(formats=True)
    ctx = server.ctx
    ctx.puller = Puller(ctx.store, endpoint=hub.url)
    return server


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(text) for text in response.text.splitlines()]


def test_pull_streams_progress_then_the_model_lists_and_chats(hub_server: LiveServer) -> None:
    client = ollama.Client(host=hub_server.url)
    progress = list(client.pull("org/tiny-ov", stream=True))
    assert all(isinstance(p, ollama.ProgressResponse) for p in progress)
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = {p.digest: p for p in progress if p.digest}
    big = IR_REPO["openvino_model.bin"]
    layer = layers["sha256:" + big.sha256()]
    assert layer.status == "pulling " + big.sha256()[:12]
    assert layer.total == layer.completed == big.size
    # Small files are plain git files: the hub gives no SHA-256, and Ollama's digest
    # field still names them.
    assert len(layers) == len(IR_REPO)

    names = {m.model for m in client.list().models}
    assert "org/tiny-ov:latest" in names
    reply = client.chat(model="org/tiny-ov", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content and reply.done


def test_pull_without_streaming_is_one_success(hub_server: LiveServer) -> None:
    client = ollama.Client(host=hub_server.url)
    assert client.pull("org/tiny-ov", stream=False).status == "success"
    response = httpx.post(
        hub_server.url + "/api/pull",
        json={"name": "org/tiny-ov", "stream": False, "insecure": True},
    )
    assert response.status_code == 200 and response.json() == {"status": "success"}


def test_a_second_pull_is_quick_and_wire_lines_are_ndjson(
    hub_server: LiveServer, hub: ServedHub
) -> None:
    url = hub_server.url + "/api/pull"
    first = httpx.post(url, json={"model": "org/tiny-ov"})
    assert first.headers["content-type"].startswith("application/x-ndjson")
    assert all(
        text == json.dumps(json.loads(text), separators=(",", ":"))
        for text in first.text.splitlines()
    )
    downloads = len([p for p, _ in hub.requests if "/resolve/" in p])
    again = _lines(httpx.post(url, json={"model": "org/tiny-ov"}))
    assert [m["status"] for m in again] == ["pulling manifest", "success"]
    assert len([p for p, _ in hub.requests if "/resolve/" in p]) == downloads


def test_a_missing_repository_is_404_before_streaming(hub_server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        list(ollama.Client(host=hub_server.url).pull("org/missing", stream=True))
    assert caught.value.status_code == 404
    assert caught.value.error == "pull model manifest: file does not exist"


@pytest.mark.parametrize("name", ["../../etc", "org/../x", "C:\\models", "hf.co/a/b/c/d"])
def test_bad_names_are_400(hub_server: LiveServer, hub: ServedHub, name: str) -> None:
    response = httpx.post(hub_server.url + "/api/pull", json={"model": name})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert not [p for p, _ in hub.requests if "/resolve/" in p]


def test_a_corrupt_file_ends_the_stream_with_an_error_and_installs_nothing(
    hub_server: LiveServer, hub: ServedHub
) -> None:
    hub.corrupt.add("openvino_model.bin")
    response = httpx.post(hub_server.url + "/api/pull", json={"model": "org/tiny-ov"})
    assert response.status_code == 200
    lines = _lines(response)
    assert lines[0] == {"status": "pulling manifest"}
    assert set(lines[-1]) == {"error"} and "SHA-256" in lines[-1]["error"]
    assert "success" not in {m.get("status") for m in lines}
    with pytest.raises(ollama.ResponseError):  # the official client raises on the error line
        list(ollama.Client(host=hub_server.url).pull("org/tiny-ov", stream=True))
    names = {m.model for m in ollama.Client(host=hub_server.url).list().models}
    assert "org/tiny-ov:latest" not in names


def test_a_failure_without_streaming_keeps_its_status(
    hub_server: LiveServer, hub: ServedHub
) -> None:
    hub.drop_after["openvino_model.bin"] = 1000
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=hub_server.url).pull("org/tiny-ov", stream=False)
    assert caught.value.status_code >= 500
    assert "could not download" in caught.value.error
    hub.drop_after.clear()
    assert ollama.Client(host=hub_server.url).pull("org/tiny-ov").status == "success"


def test_no_space_left_is_an_error_before_any_download(
    hub_server: LiveServer, hub: ServedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = SimpleNamespace(total=10, used=10, free=10)
    monkeypatch.setattr("shutil.disk_usage", lambda path: full)
    with pytest.raises(ollama.ResponseError) as caught:
        list(ollama.Client(host=hub_server.url).pull("org/tiny-ov", stream=True))
    assert "no space left on device" in caught.value.error
    assert not [p for p, _ in hub.requests if "/resolve/" in p]


class WatchedPuller(Puller):
    """A puller that says when its consumer closed a pull (before cleaning up)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closing = threading.Event()

    async def pull(self, name: str) -> AsyncGenerator[PullProgress, None]:
        inner = super().pull(name)
        try:
            async for event in inner:
                yield event
        finally:
            self.closing.set()
            await inner.aclose()


def test_a_client_that_leaves_cancels_the_download(
    hub_server: LiveServer,
    hub: ServedHub,
    tmp_path: Path,
    wait_for: Callable[[Callable[[], bool], str], None],
) -> None:
    ctx = hub_server.ctx
    watched = WatchedPuller(ctx.store, endpoint=hub.url)
    ctx.puller = watched
    release = threading.Event()
    # The hub holds the first file until the server has seen the client go, so the
    # pull cannot finish first.

    def hold(path: str) -> None:
        release.wait(15)

    hub.on_file = hold
    with (
        httpx.Client() as client,
        client.stream("POST", hub_server.url + "/api/pull", json={"model": "org/tiny-ov"}) as r,
    ):
        first = json.loads(next(r.iter_lines()))
        assert first == {"status": "pulling manifest"}
    wait_for(watched.closing.is_set, "the server to notice the client left")
    release.set()
    store = tmp_path / "models"
    wait_for(
        lambda: not any(p.name.startswith(".staging") for p in store.iterdir()),
        "the staging folder to be removed",
    )
    names = {m.model for m in ollama.Client(host=hub_server.url).list().models}
    assert "org/tiny-ov:latest" not in names
    # The lock is free again: the next pull completes.
    hub.on_file = None
    ctx.puller = Puller(ctx.store, endpoint=hub.url)
    assert ollama.Client(host=hub_server.url).pull("org/tiny-ov").status == "success"


def test_stored_models_the_hub_cannot_provide_report_success(hub_server: LiveServer) -> None:
    progress = list(ollama.Client(host=hub_server.url).pull("mock", stream=True))
    assert progress[-1].status == "success"


def test_credentials_in_the_hub_endpoint_never_reach_a_client_or_a_log(
    start: Callable[..., LiveServer], hub: ServedHub, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    sentinel = "s3cr3t-sentinel"
    server = start(formats=True)
    host = hub.url.split("://", 1)[1]
    shown: list[str] = []
    for endpoint in (f"http://user:{sentinel}@{host}", f"http://user:{sentinel}@127.0.0.1:9"):
        server.ctx.puller = Puller(server.ctx.store, endpoint=endpoint)
        for name in ("org/tiny-ov", "org/missing"):
            response = httpx.post(server.url + "/api/pull", json={"model": name}, timeout=60)
            shown.append(response.text)
    assert '"success"' in shown[0] and "error" in shown[1] and "127.0.0.1:9" in shown[2]
    httpx.post(server.url + "/api/chat", timeout=60, json={
        "model": "org/tiny-ov", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    for path in ("/api/ps", "/api/tags"):
        shown.append(httpx.get(server.url + path).text)
    shown.append(httpx.post(server.url + "/api/show", json={"model": "org/tiny-ov"}).text)
    shown += [record.getMessage() for record in caplog.records]
    assert not [text for text in shown if sentinel in text]


def test_a_stop_ends_a_pull_in_progress_with_an_error_line(
    start: Callable[..., LiveServer], hub: ServedHub
) -> None:
    """The server cancels the response past its grace period (as uvicorn does): the
    progress stream ends with Ollama's ``{"error": ...}`` line and a proper end."""
    import asyncio

    reached, release = threading.Event(), threading.Event()

    def hold(path: str) -> None:
        if path == "openvino_model.bin":
            reached.set()
            release.wait(30)

    hub.on_file = hold
    server = start(formats=True)
    server.ctx.puller = Puller(server.ctx.store, endpoint=hub.url)
    body = json.dumps({"model": "org/tiny-ov"}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/api/pull",
             "raw_path": b"/api/pull", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", server.port)}
    sent: list[dict[str, Any]] = []

    async def stop_mid_pull() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # the client stays
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        task = asyncio.ensure_future(server.app(scope, receive, send))
        assert await asyncio.to_thread(reached.wait, 30), "the download never started"
        task.cancel()
        await asyncio.wait_for(task, 10)  # returns: nothing for the server to log

    try:
        server.call(stop_mid_pull())
    finally:
        release.set()
    assert sent[0]["status"] == 200
    lines = [json.loads(m["body"]) for m in sent[1:] if m.get("body")]
    assert lines[0]["status"] == "pulling manifest"
    assert lines[-1] == {"error": "the server is stopping"}
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}

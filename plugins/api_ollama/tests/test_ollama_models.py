"""Model management through the official client: list, show, ps, copy, delete, pull."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer


def test_root_and_version_answer_like_ollama(server: LiveServer) -> None:
    root = httpx.get(server.url + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    head = httpx.head(server.url + "/")
    assert head.status_code == 200 and head.text == ""
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert tuple(int(p) for p in version.split(".")) >= (0, 6, 4)
    assert httpx.head(server.url + "/api/version").status_code == 200


def test_list_has_sizes_digests_and_details(server: LiveServer) -> None:
    listing = ollama.Client(host=server.url).list()
    assert isinstance(listing, ollama.ListResponse)
    by_name = {m.model: m for m in listing.models}
    assert set(by_name) == {"mock:latest", "mock-think:latest", "mock-embed:latest"}
    chat = by_name["mock:latest"]
    assert chat.size == 1_000_000 and chat.digest and len(chat.digest) == 64
    assert chat.modified_at is not None
    assert chat.details and chat.details.family == "mock" and chat.details.parameter_size == "1M"
    assert httpx.head(server.url + "/api/tags").status_code == 200


async def test_show_and_ps_async(server: LiveServer) -> None:
    client = ollama.AsyncClient(host=server.url)
    shown = await client.show("mock")
    assert isinstance(shown, ollama.ShowResponse)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "mock"
    assert shown.modelinfo["mock.context_length"] == 8192
    assert shown.template and shown.details and shown.details.format == "mock"
    assert shown.modified_at is not None
    embed = await client.show("mock-embed:latest")
    assert embed.capabilities == ["embedding"]
    assert embed.modelinfo and embed.modelinfo["mock.embedding_length"] == 384
    assert (await client.ps()).models == []
    await client.generate(model="mock", prompt="hi")
    (running,) = (await client.ps()).models
    assert running.name == "mock:latest" and running.digest and len(running.digest) == 64
    assert running.context_length == 8192 and running.expires_at is not None


def test_show_accepts_the_old_name_field(server: LiveServer) -> None:
    reply = httpx.post(server.url + "/api/show", json={"name": "mock"})
    assert reply.status_code == 200 and reply.json()["capabilities"] == ["completion", "tools"]


def test_show_unknown_model_is_404(server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).show("nothing-here")
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'nothing-here' not found"


def test_copy_then_delete(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    assert client.copy("mock", "my-copy:v1").status == "success"
    names = {m.model for m in client.list().models}
    assert "my-copy:v1" in names
    assert client.show("my-copy:v1").capabilities == ["completion", "tools"]
    assert client.generate(model="my-copy:v1", prompt="hello").done
    assert client.delete("my-copy:v1").status == "success"
    assert "my-copy:v1" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("my-copy:v1")
    assert caught.value.status_code == 404


def test_copy_of_unknown_model_is_404(server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).copy("ghost", "ghost2")
    assert caught.value.status_code == 404


def test_builtin_model_cannot_be_deleted(server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).delete("mock")
    assert caught.value.status_code == 400
    assert "mock:latest" in {m.model for m in ollama.Client(host=server.url).list().models}


def test_pull_progress_of_a_stored_model(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    progress = list(client.pull("mock", stream=True))
    assert all(isinstance(p, ollama.ProgressResponse) for p in progress)
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    layer = next(p for p in progress if p.digest)
    assert layer.total == layer.completed == 1_000_000
    assert layer.digest and layer.digest.startswith("sha256:")
    assert client.pull("mock:latest").status == "success"


def test_pull_of_an_unknown_name_is_404_naming_the_aliases(
    start: Callable[..., LiveServer],
) -> None:
    # The aliases come with the model formats that read them (the OpenVINO plugin's).
    server = start(formats=True)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).pull("not-in-store", stream=False)
    assert caught.value.status_code == 404
    assert "unknown model 'not-in-store'" in caught.value.error
    assert "tinyllama" in caught.value.error


def test_push_is_501_and_blobs_are_checked(server: LiveServer) -> None:
    push = httpx.post(server.url + "/api/push", json={"model": "mock"})
    assert push.status_code == 501 and "error" in push.json()
    # Blobs are served (test_ollama_blobs.py): a body that is not the digest is a 400.
    blob = httpx.post(server.url + "/api/blobs/sha256:" + "0" * 64, content=b"x")
    assert blob.status_code == 400 and "error" in blob.json()
    assert httpx.head(server.url + "/api/blobs/sha256:" + "0" * 64).status_code == 404


def test_unknown_route_and_method_use_ollamas_shape(server: LiveServer) -> None:
    missing = httpx.get(server.url + "/api/nope")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    wrong = httpx.get(server.url + "/api/chat")
    assert wrong.status_code == 405 and set(json.loads(wrong.text)) == {"error"}

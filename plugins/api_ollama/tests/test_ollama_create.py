"""``/api/create`` from a local GGUF file, an OpenVINO IR folder, or an existing model."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        items = b"".join(_string(v) for v in value)
        return struct.pack("<I", 9) + struct.pack("<IQ", 8, len(value)) + items
    return struct.pack("<II", 4, value)


def write_gguf(path: Path, metadata: dict[str, Any], shapes: list[tuple[int, ...]]) -> Path:
    """A minimal GGUF v3 file: header, metadata, tensor infos (no weights needed)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(metadata))
    for key, value in metadata.items():
        out += _string(key) + _value(value)
    for n, shape in enumerate(shapes):
        out += _string(f"t{n}") + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", 3, 0)
    path.write_bytes(out)
    return path


TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}tools{% endif %}"


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    metadata = {
        "general.architecture": "llama",
        "general.name": "Tiny",
        "llama.context_length": 4096,
        "llama.embedding_length": 64,
        "general.file_type": 3,
        "tokenizer.chat_template": TEMPLATE,
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(100)],
    }
    return write_gguf(tmp_path / "outside" / "tiny.gguf", metadata, [(64, 1000), (64,)])


@pytest.fixture
def server(start: Callable[..., LiveServer]) -> LiveServer:
    """A simulated device, with the OpenVINO plugin's formats to read model files."""
    return start(formats=True)


@pytest.fixture(autouse=True)
def _outside(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()


def test_create_from_a_gguf_file(server: LiveServer, gguf: Path, device: MockBackend) -> None:
    client = ollama.Client(host=server.url)
    progress = client.create(model="tiny", from_=str(gguf))
    assert progress.status == "success"
    listed = {m.model: m for m in client.list().models}
    tiny = listed["tiny:latest"]
    assert tiny.size == gguf.stat().st_size
    assert tiny.digest == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert tiny.details and tiny.details.format == "gguf" and tiny.details.family == "llama"
    assert tiny.details.quantization_level == "Q4_1"
    assert tiny.details.parameter_size == "64.1K"
    shown = client.show("tiny")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo and shown.modelinfo["llama.context_length"] == 4096
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.template == TEMPLATE
    assert client.generate(model="tiny", prompt="hi").done
    # Deleting the model forgets it and leaves the user's file alone.
    client.delete("tiny")
    assert "tiny:latest" not in {m.model for m in client.list().models}
    assert gguf.is_file()


def test_create_streams_progress(server: LiveServer, gguf: Path) -> None:
    client = ollama.Client(host=server.url)
    statuses = [p.status for p in client.create(model="tiny:q4", from_=str(gguf), stream=True)]
    assert statuses[-1] == "success" and "writing manifest" in statuses


def test_create_from_files_mapping(server: LiveServer, gguf: Path) -> None:
    client = ollama.Client(host=server.url)
    assert client.create(model="mapped", files={"tiny.gguf": str(gguf)}).status == "success"
    assert client.show("mapped").details.format == "gguf"  # type: ignore[union-attr]


def test_create_from_an_ir_folder(server: LiveServer, tmp_path: Path) -> None:
    folder = tmp_path / "outside" / "ir"
    folder.mkdir()
    (folder / "openvino_model.xml").write_text("<net/>")
    (folder / "openvino_model.bin").write_bytes(b"\0" * 128)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "max_position_embeddings": 32768,
            }
        )
    )
    client = ollama.Client(host=server.url)
    assert client.create(model="qwen-ir", from_=str(folder)).status == "success"
    shown = client.show("qwen-ir")
    assert shown.details and shown.details.format == "ir"
    assert shown.modelinfo and shown.modelinfo["qwen2.context_length"] == 32768
    assert shown.capabilities == ["completion"]


def test_create_from_an_existing_model_with_system_and_parameters(
    server: LiveServer, device: MockBackend
) -> None:
    client = ollama.Client(host=server.url)
    client.create(
        model="terse",
        from_="mock",
        system="Answer in one word.",
        parameters={"num_predict": 2, "stop": ["END"]},
    )
    shown = client.show("terse")
    assert shown.parameters and "num_predict" in shown.parameters and '"END"' in shown.parameters
    reply = client.generate(model="terse", prompt="hello")
    assert reply.eval_count == 2 and reply.done_reason == "length"
    assert device.counters.prompts[-1].startswith("<|system|>Answer in one word.")
    # A request's own options win over the stored ones.
    longer = client.generate(model="terse", prompt="hello", options={"num_predict": 4})
    assert longer.eval_count == 4


@pytest.mark.parametrize(
    "source",
    ["missing.gguf", "notes.txt", "truncated.gguf", "folder-without-ir", "relative.gguf"],
)
def test_create_refuses_unusable_sources(server: LiveServer, tmp_path: Path, source: str) -> None:
    outside = tmp_path / "outside"
    (outside / "notes.txt").write_text("hello")
    (outside / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    (outside / "folder-without-ir").mkdir()
    path = source if source == "relative.gguf" else str(outside / source)
    before = set(tmp_path.rglob("*"))
    response = httpx.post(server.url + "/api/create", json={"model": "bad", "from": path})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert str(tmp_path) not in response.json()["error"]  # no path in an error body
    assert set(tmp_path.rglob("*")) == before
    assert "bad:latest" not in {
        m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]
    }


def test_create_with_blob_digests_is_400(server: LiveServer) -> None:
    response = httpx.post(
        server.url + "/api/create",
        json={"model": "blobby", "files": {"model.gguf": "sha256:" + "0" * 64}},
    )
    assert response.status_code == 400 and "blob" in response.json()["error"]


def test_one_letter_models_are_created_and_copied(server: LiveServer, gguf: Path) -> None:
    client = ollama.Client(host=server.url)
    assert client.create(model="x", from_="mock").status == "success"
    assert client.create(model="y", from_=str(gguf)).status == "success"
    assert client.copy("x", "a").status == "success"
    listed = {m.model for m in client.list().models}
    assert {"x:latest", "y:latest", "a:latest"} <= listed
    assert client.generate(model="a", prompt="hi").done
    client.delete("a")
    assert "a:latest" not in {m.model for m in client.list().models}


@pytest.mark.parametrize("name", ["victim:latest.", "con", "nul.x", "com1:latest", "lpt9"])
def test_names_windows_would_alias_are_refused(
    server: LiveServer, name: str, store_snapshot: Callable[[], set[Path]]
) -> None:
    before = store_snapshot()
    created = httpx.post(server.url + "/api/create", json={"model": name, "from": "mock"})
    copied = httpx.post(server.url + "/api/copy", json={"source": "mock", "destination": name})
    for response in (created, copied):
        assert response.status_code == 400 and "invalid model name" in response.json()["error"]
    assert store_snapshot() == before


# --- files naming uploaded blobs (/api/blobs): what the ollama CLI sends for
# "FROM ./model.gguf", and the Python client's create_blob + create(files=...) ---


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def uploads(start: Callable[..., LiveServer]) -> LiveServer:
    """The mock device, the OpenVINO plugin's formats, a 1 KiB body limit (which uploads
    are not held to) and a 64 KiB blob cap."""
    return start(formats=True, max_body="1KiB", max_blob="64KiB")


def blob_files(server: LiveServer) -> list[str]:
    folder = server.ctx.store.blobs.folder
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_upload_create_chat_and_delete_through_the_ollama_client(
    uploads: LiveServer, gguf: Path
) -> None:
    client = ollama.Client(host=uploads.url)
    digest = client.create_blob(gguf)
    assert digest == digest_of(gguf.read_bytes())
    assert gguf.stat().st_size > 1024  # larger than NPU_PROXY_MAX_BODY: uploads are streamed
    assert httpx.head(f"{uploads.url}/api/blobs/{digest}").status_code == 200
    assert client.create(model="uploaded", files={"model.gguf": digest}).status == "success"
    listed = {m.model: m for m in client.list().models}
    assert listed["uploaded:latest"].digest == digest.removeprefix("sha256:")
    assert listed["uploaded:latest"].size == gguf.stat().st_size
    shown = client.show("uploaded")
    assert shown.details and shown.details.format == "gguf"
    assert shown.modelinfo and shown.modelinfo["llama.context_length"] == 4096
    assert client.chat(model="uploaded", messages=[{"role": "user", "content": "hi"}]).done
    # The model's file is the blob (a hard link), so it outlives the user's file.
    gguf.unlink()
    assert client.generate(model="uploaded", prompt="hi").done
    client.delete("uploaded")
    assert httpx.head(f"{uploads.url}/api/blobs/{digest}").status_code == 404
    assert blob_files(uploads) == []


def test_a_blob_stays_while_a_model_uses_it(uploads: LiveServer, gguf: Path) -> None:
    client = ollama.Client(host=uploads.url)
    digest = client.create_blob(gguf)
    for name in ("first", "second"):
        client.create(model=name, files={"tiny.gguf": digest}, system=f"I am {name}.")
    client.delete("first")
    assert httpx.head(f"{uploads.url}/api/blobs/{digest}").status_code == 200
    assert "I am second." in (client.show("second").modelfile or "")
    client.delete("second")
    assert httpx.head(f"{uploads.url}/api/blobs/{digest}").status_code == 404


def test_upload_answers_201_then_200_as_ollama_does(uploads: LiveServer) -> None:
    data = b"GGUF" + bytes(range(256)) * 40
    url = f"{uploads.url}/api/blobs/{digest_of(data)}"
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.post(url, content=data).status_code == 200
    assert httpx.head(url).status_code == 200
    assert blob_files(uploads) == ["sha256-" + digest_of(data).removeprefix("sha256:")]


def test_a_body_that_is_not_the_digest_is_400_and_leaves_nothing(uploads: LiveServer) -> None:
    claimed = digest_of(b"something else")
    response = httpx.post(f"{uploads.url}/api/blobs/{claimed}", content=b"x" * 10_000)
    assert response.status_code == 400
    assert response.json()["error"].startswith("digest mismatch")
    assert httpx.head(f"{uploads.url}/api/blobs/{claimed}").status_code == 404
    assert blob_files(uploads) == []


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 1024):
        yield b"z" * 1024


@pytest.mark.parametrize("chunked", [False, True])
def test_a_blob_past_the_cap_is_413_and_leaves_nothing(uploads: LiveServer, chunked: bool) -> None:
    data = b"z" * (65 * 1024)
    url = f"{uploads.url}/api/blobs/{digest_of(data)}"
    # Chunked encoding sends no Content-Length: the cap is counted while reading.
    response = httpx.post(url, content=_chunks(len(data)) if chunked else data)
    assert response.status_code == 413
    assert "NPU_PROXY_MAX_BLOB" in response.json()["error"]
    assert blob_files(uploads) == []


@pytest.mark.parametrize("digest", ["sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64])
def test_a_malformed_digest_is_400(uploads: LiveServer, digest: str) -> None:
    assert httpx.post(f"{uploads.url}/api/blobs/{digest}", content=b"x").status_code == 400
    assert httpx.head(f"{uploads.url}/api/blobs/{digest}").status_code == 400


@pytest.mark.parametrize("file_name", ["../escape.gguf", "sub/model.gguf", "con.gguf",
                                       "model.gguf.", ".hidden.gguf"])
def test_create_refuses_unsafe_file_names(
    uploads: LiveServer, gguf: Path, file_name: str
) -> None:
    digest = ollama.Client(host=uploads.url).create_blob(gguf)
    before = sorted(p.name for p in uploads.ctx.store.root.iterdir())
    response = httpx.post(f"{uploads.url}/api/create",
                          json={"model": "unsafe", "files": {file_name: digest}})
    assert response.status_code == 400 and "files" in response.json()["error"]
    assert sorted(p.name for p in uploads.ctx.store.root.iterdir()) == before


def test_create_from_blobs_no_format_reads_is_400(uploads: LiveServer) -> None:
    data = b"plain text, not a model"
    digest = digest_of(data)
    assert httpx.post(f"{uploads.url}/api/blobs/{digest}", content=data).status_code == 201
    response = httpx.post(f"{uploads.url}/api/create",
                          json={"model": "notes", "files": {"notes.txt": digest}})
    assert response.status_code == 400
    assert "notes:latest" not in {m.model for m in ollama.Client(host=uploads.url).list().models}

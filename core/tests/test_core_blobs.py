"""Blobs in the model store: verified atomic uploads, models made from them, and cleanup."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from npu_proxy.api import ApiDialect
from npu_proxy.engine.blobs import BlobStorageError, BlobStore, BlobTooLargeError, blob_hex
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.formats import HubRequest, ModelFormat, ModelFormats, Peek, RemoteFile
from npu_proxy.engine.store import ModelStore
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.testing import LiveServer, inline_plugin, make_app, test_settings
from starlette.requests import Request
from starlette.responses import JSONResponse

DATA = b"a model's bytes " * 1000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def body(data: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("the client went away")
        yield data[start:start + 1000]


class TextFormat(ModelFormat):
    """Reads any ``.txt`` file, or a folder holding one, as a model (a test format)."""

    name = "text"

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        return None

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        if path.is_dir():
            if not any(p.suffix == ".txt" for p in path.iterdir()):
                return None
        elif path.suffix != ".txt":
            return None
        return ModelInfo(name=name, format="text", family="text", context_length=512, path=path,
                         capabilities=frozenset({Capability.COMPLETION}))


def text_store(root: Path, ttl: float = 3600.0) -> ModelStore:
    return ModelStore(root, formats=ModelFormats([TextFormat()]), blob_ttl=ttl)


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_an_upload_is_verified_and_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs", ttl=3600)
    assert not blobs.has(DIGEST)
    assert await blobs.write(DIGEST, body(DATA), max_size=len(DATA)) is True
    assert blobs.has(DIGEST) and blobs.path(DIGEST).read_bytes() == DATA
    assert await blobs.write(DIGEST, body(b"never read"), max_size=10) is False
    assert [p.name for p in blobs.folder.iterdir()] == [f"sha256-{blob_hex(DIGEST)}"]


@pytest.mark.parametrize(
    ("data", "limit", "error", "fail_after"),
    [(DATA[:-1], len(DATA), InvalidRequestError, None),
     (DATA, len(DATA) - 1, BlobTooLargeError, None),
     (DATA, len(DATA), ConnectionResetError, 5000)],
)
async def test_a_failed_upload_leaves_nothing(
    tmp_path: Path, data: bytes, limit: int, error: type[Exception], fail_after: int | None
) -> None:
    blobs = BlobStore(tmp_path / "blobs", ttl=3600)
    with pytest.raises(error):
        await blobs.write(DIGEST, body(data, fail_after), max_size=limit)
    assert list(blobs.folder.iterdir()) == []


async def test_a_full_disk_is_507_naming_no_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = BlobStore(tmp_path / "blobs", ttl=3600)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BlobStorageError) as caught:
        await blobs.write(DIGEST, body(DATA), max_size=len(DATA))
    assert caught.value.status == 507
    assert caught.value.message == "the blob cannot be stored: No space left on device"
    assert list(blobs.folder.iterdir()) == []


async def test_a_model_made_from_blobs_owns_links_and_releases_them(tmp_path: Path) -> None:
    store = text_store(tmp_path)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    info = store.import_blobs({"model.txt": DIGEST}, "from-blob")
    assert info.path == store.folder_for("from-blob") / "model.txt"
    assert info.digest == DIGEST and info.size == len(DATA)
    assert info.path.read_bytes() == DATA
    fresh = text_store(tmp_path)
    fresh.scan()
    assert fresh.resolve("from-blob").path == info.path
    # Used by a model, an old blob is kept; deleting the model removes it.
    age(store.blobs.path(DIGEST), 7200)
    fresh.scan()
    assert fresh.blobs.has(DIGEST)
    fresh.delete("from-blob")
    assert not fresh.blobs.has(DIGEST)
    assert not store.folder_for("from-blob").exists()


async def test_several_blobs_make_one_model_folder(tmp_path: Path) -> None:
    store = text_store(tmp_path)
    other = b"config"
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    await store.blobs.write(other_digest, body(other), max_size=1 << 20)
    info = store.import_blobs({"model.txt": DIGEST, "config.json": other_digest}, "folder")
    assert info.path == store.folder_for("folder")
    assert sorted(p.name for p in info.path.iterdir()) == [
        "config.json", "manifest.json", "model.txt"]
    # Replacing the model releases the blobs only the old one used.
    third = b"third"
    third_digest = "sha256:" + hashlib.sha256(third).hexdigest()
    await store.blobs.write(third_digest, body(third), max_size=1 << 20)
    store.import_blobs({"only.txt": third_digest}, "folder")
    assert not store.blobs.has(DIGEST) and not store.blobs.has(other_digest)
    assert store.blobs.has(third_digest)


def test_a_missing_blob_writes_nothing(tmp_path: Path) -> None:
    store = text_store(tmp_path)
    for files in ({"model.txt": DIGEST}, {}):
        with pytest.raises(InvalidRequestError):
            store.import_blobs(files, "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "file_name",
    ["../model.txt", "sub/model.txt", "sub\\model.txt", "aux.txt", "CON .txt", "model.txt.",
     "model.txt ", ".model.txt", " model.txt", "a:b.txt", "a|b.txt", "a?.txt", "tab\t.txt",
     "x" * 201 + ".txt", ""],
)
async def test_file_names_another_platform_would_read_otherwise_are_refused(
    tmp_path: Path, file_name: str
) -> None:
    store = text_store(tmp_path)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    with pytest.raises(InvalidRequestError, match="not a plain file name"):
        store.import_blobs({file_name: DIGEST}, "nothing")
    assert names_in(tmp_path) == ["blobs"]


@pytest.mark.parametrize("file_name", ["my model (v2).txt", "qwen2.5-0.5b_q4+k.txt",
                                       "modèle.txt", "console.txt", "nul-model.txt"])
async def test_ordinary_file_names_are_kept(tmp_path: Path, file_name: str) -> None:
    store = text_store(tmp_path)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    info = store.import_blobs({file_name: DIGEST}, "named")
    assert info.path == store.folder_for("named") / file_name


async def test_unused_blobs_and_abandoned_uploads_go_after_the_ttl(tmp_path: Path) -> None:
    store = text_store(tmp_path, ttl=600)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    abandoned = store.blobs.folder / ".upload-0123"
    abandoned.write_bytes(b"half a file")
    fresh_upload = store.blobs.folder / ".upload-4567"
    fresh_upload.write_bytes(b"still arriving")
    store.scan()
    assert store.blobs.has(DIGEST) and abandoned.exists()  # younger than the ttl
    age(store.blobs.path(DIGEST), 601)
    age(abandoned, 601)
    store.scan()
    assert not store.blobs.has(DIGEST)
    assert not abandoned.exists() and fresh_upload.exists()


async def test_a_blob_asked_for_is_kept_another_ttl(tmp_path: Path) -> None:
    store = text_store(tmp_path, ttl=600)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)
    age(store.blobs.path(DIGEST), 601)
    assert store.blobs.has(DIGEST)  # what a client does before it creates the model
    store.scan()
    assert store.blobs.has(DIGEST)


async def test_where_hard_links_fail_the_model_gets_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = text_store(tmp_path)
    await store.blobs.write(DIGEST, body(DATA), max_size=1 << 20)

    def no_links(source: object, target: object) -> None:
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    info = store.import_blobs({"model.txt": DIGEST}, "copied")
    assert info.path is not None and info.path.read_bytes() == DATA
    assert info.path.stat().st_ino != store.blobs.path(DIGEST).stat().st_ino


# --- a dialect's upload prefixes: streamed past the core's body limit ----------------


class UploadDialect(ApiDialect):
    """``POST /up/{anything}`` counts the bytes it reads from the stream."""

    name = "uploader"
    prefixes = ("/up",)
    uploads = ("/up",)

    def router(self, ctx: Any) -> APIRouter:
        router = APIRouter()

        @router.post("/up/{name}")
        @router.post("/other/{name}")
        async def count(name: str, request: Request) -> JSONResponse:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
            return JSONResponse({"bytes": total})

        return router


def test_upload_prefixes_skip_the_body_limit_but_not_the_key(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, max_body="1KiB", api_key="sesame")
    plugin = inline_plugin(npu_proxy_register_api=lambda register: register(UploadDialect()))
    key = {"x-api-key": "sesame"}
    with LiveServer(make_app(settings, [], {"uploader": plugin})) as server:
        big = b"u" * 100_000
        uploaded = httpx.post(server.url + "/up/file", content=big, headers=key)
        assert uploaded.status_code == 200 and uploaded.json() == {"bytes": len(big)}
        assert httpx.post(server.url + "/other/file", content=big, headers=key).status_code == 413
        assert httpx.post(server.url + "/up/file", content=big).status_code == 401
        # A path that only starts with the prefix's letters is not under it.
        assert httpx.post(server.url + "/upx", content=big, headers=key).status_code == 413

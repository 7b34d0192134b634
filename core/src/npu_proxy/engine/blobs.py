"""Uploaded files, stored by their sha256 digest in the model store's ``blobs`` folder.

A client uploads a model's files one by one (``POST /api/blobs/sha256:<hex>`` in Ollama's
API), then creates a model from their digests. Each upload is verified against its
digest, capped in size and written atomically (a temporary file renamed into place), so
a blob, once present, is whole. A model made from blobs holds hard links to them (a
copy where the file system has none): the link count says whether any model still uses
a blob, with no second index to keep in step. A blob no model uses is removed when the
last model using it is deleted, and an upload nobody made a model of after ``ttl``
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .errors import EngineError, InvalidRequestError

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOBS = "blobs"
_UPLOAD_PREFIX = ".upload-"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
#: Bytes gathered before one write (and hash update) in a worker thread.
_WRITE_CHUNK = 1 << 20

FileId = tuple[int, int, int]
"""A file's device, inode number and modification time (ns): the same for a hard link
and its blob."""


class BlobTooLargeError(EngineError):
    """An upload passed the size cap (``NPU_PROXY_MAX_BLOB``)."""

    status = 413
    code = "too_large"


class BlobStorageError(EngineError):
    """The disk refused an upload (full, read-only); the message names no path."""

    status = 507
    code = "insufficient_storage"


def blob_hex(digest: object) -> str:
    """The hex part of ``sha256:<64 hex>`` (or ``sha256-<hex>``); InvalidRequestError if not one."""
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidRequestError(
            "a blob digest is 'sha256:' followed by 64 lower-case hex digits", param="digest"
        )
    return match.group(1)


def is_digest(value: object) -> bool:
    """Whether ``value`` has the shape of a blob digest (it may still be absent)."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


class BlobStore:
    """Blobs under ``folder`` as ``sha256-<hex>`` files.

    ``has``, ``path``, ``link`` and ``prune`` touch the disk: call them in a worker
    thread. :meth:`write` is a coroutine that does its disk work in worker threads.
    """

    def __init__(self, folder: Path, ttl: float) -> None:
        self.folder = folder
        self.ttl = ttl
        # A blob is linked into a model and pruned under one lock, so a prune never
        # removes a blob between a create's check and its link.
        self._linking = threading.Lock()

    def _file(self, digest: str) -> Path:
        return self.folder / f"sha256-{blob_hex(digest)}"

    def has(self, digest: str) -> bool:
        """Whether the blob is stored; a blob asked for stays at least ``ttl`` longer."""
        path = self._file(digest)
        try:
            os.utime(path)
        except OSError:
            return False
        return path.is_file()

    def path(self, digest: str) -> Path:
        """The stored blob's file; InvalidRequestError (naming the digest) if absent."""
        path = self._file(digest)
        if not path.is_file():
            raise InvalidRequestError(
                f"blob {digest} not found: upload it first (POST /api/blobs/{digest})",
                param="files",
            )
        return path

    async def write(self, digest: str, chunks: AsyncIterable[bytes], max_size: int) -> bool:
        """Store the body ``chunks`` as blob ``digest``; True if new, False if already there.

        Raises InvalidRequestError when the body's sha256 is not ``digest`` and
        :class:`BlobTooLargeError` past ``max_size`` bytes; nothing is left behind then
        (nor when the client goes away mid-upload). :class:`BlobStorageError` when the
        disk refuses the file.
        """
        final = self._file(digest)
        if await asyncio.to_thread(self.has, digest):
            return False
        temp = self.folder / f"{_UPLOAD_PREFIX}{uuid.uuid4().hex}"
        await _on_disk(self.folder.mkdir, parents=True, exist_ok=True)
        stream = await _on_disk(_create, temp)
        sha = hashlib.sha256()
        try:
            size = 0
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_size:
                    raise BlobTooLargeError(
                        f"blob is larger than {max_size} bytes (NPU_PROXY_MAX_BLOB)")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _WRITE_CHUNK:
                    await _on_disk(_write, stream, sha, pending)
                    pending, pending_size = [], 0
            await _on_disk(_write, stream, sha, pending, finish=True)
            if sha.hexdigest() != blob_hex(digest):
                raise InvalidRequestError(
                    f"digest mismatch: expected {digest}, got sha256:{sha.hexdigest()}",
                    param="digest",
                )
            await _on_disk(os.replace, temp, final)
        except BaseException:
            await asyncio.to_thread(_discard, stream, temp)
            raise
        log.info("stored blob sha256:%s (%d bytes)", sha.hexdigest()[:12], size)
        await asyncio.to_thread(self.prune)
        return True

    def link(self, digest: str, target: Path) -> None:
        """Put blob ``digest`` at ``target``: a hard link, or a copy where links fail.
        InvalidRequestError (naming the digest) if the blob is not stored."""
        with self._linking:
            source = self.path(digest)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)

    def prune(self, released: Iterable[FileId] = ()) -> list[str]:
        """Remove blobs no model uses: those whose last user just went (``released``,
        the :func:`file_ids` of a deleted model's files), and the ones unused for
        ``ttl`` seconds; also uploads abandoned for that long. Returns the digests
        removed."""
        if not self.folder.is_dir():
            return []
        cutoff = time.time() - self.ttl
        with self._linking:
            removed = self._prune(set(released), cutoff)
        if removed:
            log.info("removed %d blob(s) no model uses", len(removed))
        return removed

    def _prune(self, released: set[FileId], cutoff: float) -> list[str]:
        removed = []
        for entry in self.folder.iterdir():
            with contextlib.suppress(OSError):
                stat = entry.stat()
                if entry.name.startswith(_UPLOAD_PREFIX):
                    if stat.st_mtime < cutoff:
                        entry.unlink()
                    continue
                unused = stat.st_nlink <= 1
                if unused and (_file_id(stat) in released or stat.st_mtime < cutoff):
                    entry.unlink()
                    removed.append("sha256:" + entry.name.removeprefix("sha256-"))
        return removed


async def _on_disk(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``work`` in a worker thread; an OSError (a full or read-only disk) becomes a
    :class:`BlobStorageError` that names no path."""
    try:
        return await asyncio.to_thread(work, *args, **kwargs)
    except OSError as exc:
        raise BlobStorageError(f"the blob cannot be stored: {exc.strerror}") from None


def _create(path: Path) -> BinaryIO:
    return path.open("wb")


def _write(stream: BinaryIO, sha: hashlib._Hash, chunks: list[bytes], finish: bool = False) -> None:
    for chunk in chunks:
        sha.update(chunk)
        stream.write(chunk)
    if finish:
        stream.flush()
        os.fsync(stream.fileno())
        stream.close()


def _discard(stream: BinaryIO, temp: Path) -> None:
    stream.close()
    temp.unlink(missing_ok=True)


def file_ids(folder: Path) -> set[FileId]:
    """Who the files in ``folder`` are (what a deleted model releases): a hard link
    and its blob share them, and a file that merely reuses an inode number does not."""
    found = set()
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                found.add(_file_id(path.stat()))
    return found


def _file_id(stat: os.stat_result) -> FileId:
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns

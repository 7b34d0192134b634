"""A local server speaking the part of the Hugging Face hub protocol that pulls use.

Point huggingface-hub at it (``Puller(..., endpoint=hub.url)`` or ``HF_ENDPOINT``) and
serve real files from memory or disk: no test ever downloads from the internet.
Faults are switches: a corrupted file, a connection dropped mid-file, a redirect to
another host (to see which headers follow it), ``Range`` ignored (the whole file sent).
A file may be padded with zeros generated as they are sent, so a test can serve
hundreds of megabytes without holding them. It records every request's path and
whether it carried an ``Authorization`` header, and the bytes each file download sent.
Files kept in git (``lfs=False``) are listed with their real git blob id.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from .testing import LiveServer

#: The root of the hub's JSON API (``HfApi.model_info`` asks ``{HUB_API}/models/...``);
#: a path of the Hugging Face hub protocol, not of any API dialect this server speaks.
HUB_API = "/api"
#: Where the hub lists a repository, with or without a revision.
MODEL_INFO_PATHS = (
    f"{HUB_API}/models/{{org}}/{{name}}/revision/{{revision}}",
    f"{HUB_API}/models/{{org}}/{{name}}",
)
#: Where the hub serves one file of a repository at a revision.
RESOLVE_PATH = "/{org}/{name}/resolve/{revision}/{path:path}"


_BLOCK = 1 << 20


def git_blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a file (``git hash-object``), as the hub lists it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class HubFile:
    """A file in a fake repository: bytes in memory or a path on disk, followed by
    ``padding`` zero bytes (made as they are sent, never held)."""

    data: bytes | None = None
    path: Path | None = None
    lfs: bool = True
    padding: int = 0

    def content(self) -> bytes:
        if self.data is not None:
            return self.data + bytes(self.padding)
        assert self.path is not None
        return self.path.read_bytes()

    def blocks(self) -> Iterator[bytes]:
        """The content in blocks of at most 1 MiB, the padding generated lazily."""
        if self.data is not None:
            yield from (self.data[i : i + _BLOCK] for i in range(0, len(self.data), _BLOCK))
        else:
            with self.path.open("rb") as handle:  # type: ignore[union-attr]
                yield from iter(lambda: handle.read(_BLOCK), b"")
        zeros = bytes(_BLOCK)
        for start in range(0, self.padding, _BLOCK):
            yield zeros[: min(_BLOCK, self.padding - start)]

    @property
    def size(self) -> int:
        base = len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]
        return base + self.padding

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for block in self.blocks():
            digest.update(block)
        return digest.hexdigest()

    def blob_id(self, sha256: str | None = None) -> str:
        """The git blob id: of the content for a git file, of the LFS pointer otherwise
        (``sha256``: the content's, if already computed)."""
        if not self.lfs:
            return git_blob_id(self.content())
        oid = sha256 or self.sha256()
        pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                   f"size {self.size}\n")
        return git_blob_id(pointer.encode())


@dataclass
class FakeHub:
    """Repositories by id (``org/name``) -> files by path; faults by file path."""

    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    corrupt: set[str] = field(default_factory=set)  # serve wrong bytes for these paths
    drop_after: dict[str, int] = field(default_factory=dict)  # close after N bytes
    redirect_to: str | None = None  # base URL to redirect file downloads to
    ignore_range: bool = False  # answer a ranged request with the whole file (200)
    sent: dict[str, int] = field(default_factory=dict)  # bytes of each file sent so far
    requests: list[tuple[str, bool]] = field(default_factory=list)  # (path, had auth)
    on_file: Callable[[str], None] | None = None  # called before a file is served

    def app(self) -> FastAPI:
        app = FastAPI()
        hub = self

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            hub.requests.append((request.url.path, "authorization" in request.headers))
            response: Response = await call_next(request)
            return response

        @app.get(MODEL_INFO_PATHS[0])
        @app.get(MODEL_INFO_PATHS[1])
        async def model_info(org: str, name: str, revision: str = "main") -> Response:
            repo = hub.repos.get(f"{org}/{name}")
            if repo is None:
                return JSONResponse({"error": "Repository not found"}, status_code=404,
                                    headers={"X-Error-Code": "RepoNotFound"})
            siblings = []
            for path, file in sorted(repo.items()):
                sha256 = file.sha256() if file.lfs else None
                entry: dict[str, Any] = {"rfilename": path, "size": file.size,
                                         "blobId": file.blob_id(sha256)}
                if sha256 is not None:
                    entry["lfs"] = {"sha256": sha256, "size": file.size,
                                    "pointerSize": 134}
                siblings.append(entry)
            return JSONResponse({"id": f"{org}/{name}", "modelId": f"{org}/{name}",
                                 "sha": hub.commit, "siblings": siblings, "private": False})

        @app.get(RESOLVE_PATH)
        async def resolve(org: str, name: str, revision: str, path: str,
                          request: Request) -> Response:
            repo = hub.repos.get(f"{org}/{name}")
            file = repo.get(path) if repo else None
            if file is None:
                return JSONResponse({"error": "Entry not found"}, status_code=404,
                                    headers={"X-Error-Code": "EntryNotFound"})
            if hub.redirect_to and "range" not in request.headers:
                return RedirectResponse(f"{hub.redirect_to}/{org}/{name}/resolve/{revision}/"
                                        f"{path}", status_code=302)
            if hub.on_file is not None:
                hub.on_file(path)
            span = request.headers.get("range", "")
            if file.padding and (hub.ignore_range or not span):
                return StreamingResponse(hub._count(path, file.blocks()), headers={
                    "Content-Length": str(file.size)}, media_type="application/octet-stream")
            data = file.content()
            if path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if span.startswith("bytes=") and not hub.ignore_range:
                start, _, end = span[6:].partition("-")
                chunk = data[int(start) : int(end) + 1 if end else None]
                return Response(chunk, status_code=206, headers={
                    "Content-Range": f"bytes {start}-{int(start) + len(chunk) - 1}/{len(data)}"})
            if path in hub.drop_after:
                cut = hub.drop_after[path]

                async def broken() -> AsyncIterator[bytes]:
                    yield data[:cut]
                    raise ConnectionResetError("dropped by the fake hub")

                return StreamingResponse(broken(), headers={"Content-Length": str(len(data))})
            return Response(data, media_type="application/octet-stream")

        return app

    async def _count(self, path: str, blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
        """``blocks``, counting in :attr:`sent` each block handed to the server."""
        self.sent.setdefault(path, 0)
        for block in blocks:
            self.sent[path] += len(block)  # counted as handed to the server
            yield block

    def serve(self) -> LiveServer:
        """A running server for this hub (a context manager, like LiveServer)."""
        return LiveServer(self.app())

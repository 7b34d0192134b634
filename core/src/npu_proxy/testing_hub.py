"""A local server speaking the part of the Hugging Face hub protocol that pulls use.

Point huggingface-hub at it (``Puller(..., endpoint=hub.url)`` or ``HF_ENDPOINT``) and
serve real files from memory or disk: no test ever downloads from the internet.
Faults are switches: a corrupted file, a connection dropped mid-file, a redirect to
another host (to see which headers follow it). It records every request's path and
whether it carried an ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
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


@dataclass
class HubFile:
    """A file in a fake repository: bytes in memory or a path on disk."""

    data: bytes | None = None
    path: Path | None = None
    lfs: bool = True

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
        else:
            with self.path.open("rb") as handle:  # type: ignore[union-attr]
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


@dataclass
class FakeHub:
    """Repositories by id (``org/name``) -> files by path; faults by file path."""

    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    corrupt: set[str] = field(default_factory=set)  # serve wrong bytes for these paths
    drop_after: dict[str, int] = field(default_factory=dict)  # close after N bytes
    redirect_to: str | None = None  # base URL to redirect file downloads to
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
                entry: dict[str, Any] = {"rfilename": path, "size": file.size,
                                         "blobId": hashlib.sha1(path.encode()).hexdigest()}
                if file.lfs:
                    entry["lfs"] = {"sha256": file.sha256(), "size": file.size,
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
            data = file.content()
            if path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            span = request.headers.get("range", "")
            if span.startswith("bytes="):
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

    def serve(self) -> LiveServer:
        """A running server for this hub (a context manager, like LiveServer)."""
        return LiveServer(self.app())

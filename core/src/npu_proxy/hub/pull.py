"""Pulling models from a Hugging Face hub into the model store: a verified downloader.

The hub's listing (``huggingface_hub.HfApi.model_info`` with file metadata) gives every
file's size and LFS SHA-256; the registered model formats (the store's ``formats``) say
which of them make the model, describe what arrived and prepare it (this module knows
no format and no dialect's progress shape). Files stream into a staging folder
next to the store, each checked against its LFS SHA-256 or, for small files kept in
git, its git blob id (the SHA-1 ``git hash-object`` gives); only a complete, verified
model is renamed into place, under a lock that also holds across processes. A failure
of any kind removes the staging folder and leaves earlier models untouched.
``HF_TOKEN`` goes only to the configured endpoint (httpx drops it on a redirect to
another host) and is never logged; neither is a user or password inside ``HF_ENDPOINT``
(every URL in a message or log line passes :func:`~npu_proxy.redaction.redact_url`).
A format's ``peek`` at a file reads the commit the download will fetch, and never more
than the bytes it asked for, whether or not the hub honours ``Range``.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

# huggingface-hub takes about half a second to import and only pulls need it, so it is
# imported where it is used: a server starts (and answers /health) that much sooner.
from .. import __version__
from ..engine.errors import EngineError
from ..engine.formats import HubAlias, HubRequest, ModelFormat, RemoteFile
from ..engine.store import ModelStore
from ..engine.types import ModelInfo, PulledFile, PulledFrom
from ..redaction import redact_loggers, redact_url, redact_urls
from .spec import resolve_pull_name

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.2
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")
#: Loggers of the HTTP clients a pull uses: their request lines carry the endpoint.
_CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore", "huggingface_hub")


class PullError(EngineError):
    """A pull failed; the message is safe to show (no paths, no token)."""

    status = 500
    code = "pull_failed"


class HubUnreachableError(PullError):
    """The hub could not be reached or answered with a server error."""

    status = 502
    code = "hub_unreachable"


DEFAULT_ENDPOINT = "https://huggingface.co"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of httpx and of the HTTP client huggingface-hub brings (httpx2)."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [httpx.HTTPError, ConnectionError, HfHubHTTPError]
    try:
        import httpx2

        errors.append(httpx2.HTTPError)
    except ImportError:  # older huggingface-hub releases use httpx itself
        pass
    return tuple(errors)



class PullNotFoundError(PullError):
    status = 404
    code = "model_not_found"


class PullPhase(enum.StrEnum):
    """The steps of a pull, in order; a dialect words them its own way."""

    LISTING = "listing"  # asking the hub what the repository holds
    DOWNLOADING = "downloading"  # one file: ``file`` and ``completed`` bytes are set
    VERIFYING = "verifying"  # every file arrived with its SHA-256 checked
    INSTALLING = "installing"  # preparing the model and writing its manifest
    DONE = "done"  # the model is listed


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress message: the phase and, while downloading, the file and its bytes."""

    phase: PullPhase
    file: RemoteFile | None = None
    completed: int | None = None


def safe_remote_path(path: str) -> str:
    """A file name listed by the hub, refused unless it stays inside the model folder."""
    parts = path.split("/")
    if (
        not path
        or len(path) > 200
        or "\\" in path
        or len(parts) > 4
        or any(not _SAFE_PART.match(p) or p in (".", "..") for p in parts)
    ):
        raise PullError("the repository lists a file name that is not allowed")
    return path


class Cancelled(Exception):
    """The consumer went away; the worker stops and cleans up."""


class Puller:
    """Pulls models into ``store``; one per server (or per CLI command).

    The store's registered formats choose files and describe models. ``endpoint`` and
    ``token`` default to huggingface-hub's own configuration (``HF_ENDPOINT``,
    ``HF_TOKEN`` or the saved login).
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        #: pull aliases the formats offer; ValueError if two formats claim one spelling
        self.aliases: dict[str, HubAlias] = store.formats.aliases()
        # HF_ENDPOINT is read now, not when huggingface-hub was imported.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        #: the endpoint as messages show it: without a user, password or token
        self.shown_endpoint = redact_url(self.endpoint)
        redact_loggers(*_CLIENT_LOGGERS)
        self._token = token
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._file_locks: dict[str, FileLock] = {}
        self._cleanups: set[asyncio.Future[None]] = set()

    # --- the public, async side -------------------------------------------------------

    def resolve(self, name: object) -> HubRequest:
        """What pulling ``name`` would fetch; InvalidRequestError for an unusable name."""
        return resolve_pull_name(name, self.aliases)

    async def pull(self, name: str) -> AsyncGenerator[PullProgress, None]:
        """Pull ``name``, yielding progress; the model is listed once ``success`` is yielded.

        Raises InvalidRequestError (bad name), PullNotFoundError (no such repository or
        file) or PullError (network, integrity, disk). Closing the iterator early
        cancels the download and removes its partial files.
        """
        spec = self.resolve(name)
        lock = self._local_locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()
            cancelled = threading.Event()

            def emit(item: PullProgress | BaseException | None) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = loop.run_in_executor(None, self._download, spec, emit, cancelled)
            staging: Path | None = None
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                result = await worker
                if result is None:  # already present and verified
                    yield PullProgress(PullPhase.DONE)
                    return
                staging, fmt, info = result
                yield PullProgress(PullPhase.INSTALLING)
                info = await self._prepare(fmt, staging, info)
                await asyncio.to_thread(self.store.install, staging, info)
                staging = None
                yield PullProgress(PullPhase.DONE)
            finally:
                cancelled.set()
                # The clean-up runs as its own task: a caller cancelled again and again
                # (a streaming response whose client left) cannot cut it short, and a
                # consumer that left does not wait for a download thread stuck in a read.
                cleanup = asyncio.ensure_future(self._clean_up(worker, staging, spec))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                if worker.done():
                    await asyncio.shield(cleanup)

    async def _clean_up(
        self, worker: asyncio.Future[Any], staging: Path | None, spec: HubRequest
    ) -> None:
        """Wait for the download thread, remove an uninstalled staging folder, unlock."""
        if not worker.done():
            await asyncio.wait([worker])
        if staging is not None:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await asyncio.to_thread(self._unlock, spec)

    async def _prepare(self, fmt: ModelFormat, staging: Path, info: ModelInfo) -> ModelInfo:
        """Let the model's format make the downloaded files loadable (e.g. convert them)."""
        try:
            return await asyncio.to_thread(fmt.prepare, staging, info)
        except EngineError:
            raise
        except Exception as exc:
            log.exception("preparing %s as %s failed", info.name, fmt.name)
            raise PullError(f"could not prepare {info.name} ({fmt.name})") from exc

    # --- the worker thread ------------------------------------------------------------

    def _token_value(self) -> str | None:
        if self._token is not None:
            return self._token
        from huggingface_hub import get_token

        return get_token()

    def _download(
        self, spec: HubRequest, emit: Callable[[Any], None], cancelled: threading.Event
    ) -> tuple[Path, ModelFormat, ModelInfo] | None:
        import httpx
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        staging: Path | None = None
        try:
            emit(PullProgress(PullPhase.LISTING))
            commit, files = self._list(spec)
            fmt, files = self._select(spec, commit, files)
            self._lock(spec)
            if self._up_to_date(spec, commit):
                emit(None)
                return None
            self._check_space(files)
            staging = self.store.staging_folder(spec.name)
            with httpx.Client(
                headers=build_hf_headers(
                    token=self._token_value(), library_name="npu-proxy",
                    library_version=__version__,
                ),
                follow_redirects=True,
                timeout=httpx.Timeout(30.0, read=60.0),
            ) as client:
                for remote in files:
                    self._fetch(client, spec, commit, remote, staging, emit, cancelled)
            emit(PullProgress(PullPhase.VERIFYING))
            info = self._describe(spec, fmt, commit, files, staging)
            emit(None)
            return staging, fmt, info
        except BaseException as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            emit(self._translate(exc))
            emit(None)
            return None

    def _lock(self, spec: HubRequest) -> None:
        path = self.store.lock_path(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=3600)
        except Timeout:
            raise PullError(f"another pull of {spec.name} did not finish") from None
        self._file_locks[spec.name] = lock

    def _unlock(self, spec: HubRequest) -> None:
        lock = self._file_locks.pop(spec.name, None)
        if lock is not None:
            lock.release()

    def _translate(self, exc: BaseException) -> BaseException:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, Cancelled):
            return PullError("pull cancelled")
        if isinstance(exc, OfflineModeIsEnabled):
            return PullError("cannot pull while offline (HF_HUB_OFFLINE is set)")
        if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError):
            return PullNotFoundError("pull model manifest: file does not exist")
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return PullError("no space left on device in the model store")
        if isinstance(exc, _network_errors()):
            log.warning("pull failed: %s", type(exc).__name__)
            return HubUnreachableError(
                f"could not download from {self.shown_endpoint}: {type(exc).__name__}"
            )
        # The traceback is formatted here, not by the handler, so that its URLs are
        # redacted whichever handler prints it.
        log.error("pull failed\n%s", redact_urls("".join(traceback.format_exception(exc))))
        return PullError("pull failed")

    def _list(self, spec: HubRequest) -> tuple[str, list[RemoteFile]]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self._token_value(), library_name="npu-proxy")
        info = api.model_info(spec.repo, revision=spec.revision, files_metadata=True)
        files = []
        for sibling in info.siblings or []:
            path = safe_remote_path(sibling.rfilename)
            if sibling.lfs is not None:
                files.append(RemoteFile(path, sibling.lfs.size, sibling.lfs.sha256,
                                        sibling.blob_id or ""))
            else:
                files.append(RemoteFile(path, sibling.size or 0, None, sibling.blob_id or ""))
        return info.sha or spec.revision, files

    def _select(
        self, spec: HubRequest, commit: str, files: list[RemoteFile]
    ) -> tuple[ModelFormat, list[RemoteFile]]:
        """The format that reads this repository and the files it needs."""
        formats = self.store.formats
        names = ", ".join(formats.names()) or "none"
        if spec.format is not None:
            fmt = formats.get(spec.format)
            if fmt is None:
                raise PullError(
                    f"no installed plugin reads {spec.format} models (installed formats: {names})"
                )
            candidates = [fmt]
        else:
            candidates = list(formats)
        peek = self._peeker(spec, commit)
        for fmt in candidates:
            chosen = fmt.select(spec, files, peek)
            if chosen:
                return fmt, chosen
        if spec.format is not None:
            raise PullError(f"{spec.repo} holds no {spec.format} model")
        raise PullError(f"{spec.repo} holds no model of an installed format ({names})")

    def _peeker(self, spec: HubRequest, commit: str) -> Callable[[RemoteFile, int], bytes]:
        """``peek(file, size)``: the first ``size`` bytes of a listed file at ``commit``
        (the revision the download fetches), asked for with ``Range`` and read as a
        stream that stops at ``size`` bytes, also when the hub sends the whole file."""

        def peek(remote: RemoteFile, size: int) -> bytes:
            import httpx
            from huggingface_hub import hf_hub_url
            from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

            url = hf_hub_url(spec.repo, remote.path, revision=commit, endpoint=self.endpoint)
            headers = build_hf_headers(token=self._token_value(), library_name="npu-proxy")
            headers["Range"] = f"bytes=0-{size - 1}"
            # identity: a compressed body could inflate past any bound in one chunk
            headers["Accept-Encoding"] = "identity"
            data = bytearray()
            with httpx.Client(follow_redirects=True, timeout=30.0) as client, \
                    client.stream("GET", url, headers=headers) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes(min(size, CHUNK)):
                    data += chunk[: size - len(data)]
                    if len(data) >= size:
                        break  # leaving the block closes the connection: nothing more is read
            return bytes(data)

        return peek

    def _up_to_date(self, spec: HubRequest, commit: str) -> bool:
        try:
            existing = self.store.resolve(spec.name)
        except EngineError:
            return False
        pulled = existing.pulled
        return pulled is not None and pulled.revision == commit and not existing.builtin

    def _check_space(self, files: list[RemoteFile]) -> None:
        self.store.root.mkdir(parents=True, exist_ok=True)
        need = sum(f.size for f in files)
        free = shutil.disk_usage(self.store.root).free
        if need > free:
            raise PullError(
                f"no space left on device: the model needs {need / 1e9:.2f} GB, "
                f"the model store has {free / 1e9:.2f} GB free"
            )

    def _fetch(
        self,
        client: httpx.Client,
        spec: HubRequest,
        commit: str,
        remote: RemoteFile,
        staging: Path,
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        target = staging / remote.path
        target.parent.mkdir(parents=True, exist_ok=True)
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(spec.repo, remote.path, revision=commit, endpoint=self.endpoint)
        digest = hashlib.sha256()
        # A file kept in git (not LFS) is named by its blob id: the SHA-1 of
        # ``blob <size>\0`` and the content, as ``git hash-object`` computes it.
        blob = (
            hashlib.sha1(f"blob {remote.size}\0".encode(), usedforsecurity=False)
            if remote.sha256 is None and _GIT_OID.match(remote.blob_id) else None
        )
        done = 0
        last = 0.0
        emit(PullProgress(PullPhase.DOWNLOADING, remote, 0))
        with client.stream("GET", url) as response, target.open("wb") as out:
            if response.status_code == 404:
                raise PullNotFoundError(f"{remote.path} is missing from {spec.repo}")
            response.raise_for_status()
            for chunk in response.iter_bytes(CHUNK):
                if cancelled.is_set():
                    raise Cancelled()
                out.write(chunk)
                digest.update(chunk)
                if blob is not None:
                    blob.update(chunk)
                done += len(chunk)
                if done > remote.size:
                    raise PullError(f"{remote.path} is larger than the repository says")
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    emit(PullProgress(PullPhase.DOWNLOADING, remote, done))
        if done != remote.size:
            raise PullError(f"{remote.path} arrived incomplete ({done} of {remote.size} bytes)")
        if remote.sha256 and digest.hexdigest() != remote.sha256:
            raise PullError(f"{remote.path} does not match its SHA-256; nothing was installed")
        if blob is not None and blob.hexdigest() != remote.blob_id:
            raise PullError(
                f"{remote.path} does not match its git blob id; nothing was installed"
            )
        emit(PullProgress(PullPhase.DOWNLOADING, remote, done))

    # --- describing what arrived ------------------------------------------------------

    def _describe(
        self,
        spec: HubRequest,
        fmt: ModelFormat,
        commit: str,
        files: list[RemoteFile],
        staging: Path,
    ) -> ModelInfo:
        """The format's description of the staging folder, with what the hub knows."""
        try:
            info = fmt.describe(staging, spec.name)
        except EngineError as exc:
            raise PullError(f"the downloaded files are unusable: {exc.message}") from None
        if info is None:
            raise PullError(f"the downloaded files are not a {fmt.name} model")
        listing = hashlib.sha256(
            json.dumps(sorted((f.path, f.digest) for f in files)).encode()
        ).hexdigest()
        alias = spec.alias
        return replace(
            info,
            name=spec.name,
            size=sum(f.size for f in files),
            digest=listing,
            modified_at=datetime.now(UTC),
            source=f"hf.co/{spec.repo}@{commit}",
            family=info.family or (alias.family if alias else ""),
            parameter_size=(alias.parameter_size if alias else "") or info.parameter_size,
            quantization_level=info.quantization_level or (alias.quantization if alias else ""),
            pulled=PulledFrom(
                spec.repo, commit, tuple(PulledFile(f.path, f.size, f.sha256) for f in files)
            ),
        )

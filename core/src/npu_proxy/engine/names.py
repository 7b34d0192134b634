"""Model names: Ollama-style ``[namespace/]model[:tag]``, validated where they are parsed.

A name is also a folder name in the model store, so anything that could escape it
(``..``, path separators, drive letters, NUL, control characters, over-long parts) is
refused here, before any route or command touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidRequestError

DEFAULT_TAG = "latest"
MAX_PART = 80
MAX_NAME = 200
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed model name. ``str()`` gives the canonical ``ns/model:tag`` form."""

    namespace: str | None
    model: str
    tag: str

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.model}" if self.namespace else self.model
        return f"{base}:{self.tag}"

    @property
    def folder(self) -> str:
        """A single path component, safe to join under the model store."""
        prefix = self.namespace.replace("/", "--") + "--" if self.namespace else ""
        return f"{prefix}{self.model}--{self.tag}"


def _bad(name: str, why: str) -> InvalidRequestError:
    shown = name if len(name) <= 60 else name[:57] + "..."
    return InvalidRequestError(f"invalid model name {shown!r}: {why}", param="model")


def parse_model_name(name: object) -> ModelName:
    """Parse and validate ``name``; raises :class:`InvalidRequestError` when unsafe or empty.

    Names compare case-insensitively (as Ollama's do); the canonical form is lower case.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError("model is required", param="model")
    text = name.strip()
    if len(text) > MAX_NAME:
        raise _bad(text, f"longer than {MAX_NAME} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise _bad(text, "control characters are not allowed")
    if "\\" in text or ".." in text:
        raise _bad(text, "path separators and '..' are not allowed")
    if re.match(r"^[A-Za-z]:", text) or text.startswith("/"):
        raise _bad(text, "absolute paths and drive letters are not allowed")
    base, sep, tag = text.rpartition(":")
    if not sep:
        base, tag = text, DEFAULT_TAG
    if not tag or not _TAG.match(tag) or len(tag) > MAX_PART:
        raise _bad(text, "the tag may hold letters, digits, '_', '.' and '-'")
    # Hub-style names such as "hf.co/org/repo" have a two-part namespace; the folder
    # name joins the parts with "--" so it stays one safe path component.
    parts = base.split("/")
    if len(parts) > 3 or any(not _PART.match(p) or len(p) > MAX_PART for p in parts):
        raise _bad(text, "use [namespace/]model[:tag] with letters, digits, '_', '.', '-'")
    namespace = "/".join(parts[:-1]) or None
    return ModelName(
        namespace=namespace.lower() if namespace else None,
        model=parts[-1].lower(),
        tag=tag.lower(),
    )


def canonical(name: object) -> str:
    """The canonical string of ``name`` (``smollm2`` -> ``smollm2:latest``)."""
    return str(parse_model_name(name))

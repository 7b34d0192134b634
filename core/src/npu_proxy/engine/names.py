"""Model names: Ollama-style ``[namespace/]model[:tag]``, validated where they are parsed.

A name is also a folder name in the model store, so anything that could escape it
(``..``, path separators, drive paths, NUL, control characters, over-long parts) is
refused here, before any route or command touches the disk. A name valid here is valid
on every platform: parts that Windows would alias (a trailing dot, a reserved device
name such as ``con`` or ``com1.x``) are refused everywhere, so a store moved between
machines names the same models.

A one-letter model with a tag (``x:latest``) reads like a drive-relative path on
Windows, but a name never becomes a path: only :attr:`ModelName.folder` reaches the
disk, and it joins the parts with ``--``. Only a drive letter followed by a path
separator (``C:/``, ``C:\\``) is refused as a path.
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
_DRIVE_PATH = re.compile(r"^[A-Za-z]:[/\\]")
#: Device names Windows reserves in every folder, with or without an extension.
WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)


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


def _check_portable(text: str, part: str) -> None:
    """Refuse a part Windows would alias to another file: a trailing dot, a device name."""
    if part.endswith("."):
        raise _bad(text, "a name part may not end with '.'")
    if part.split(".", 1)[0].lower() in WINDOWS_RESERVED:
        raise _bad(text, f"{part.split('.', 1)[0]!r} is a reserved device name on Windows")


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
    if _DRIVE_PATH.match(text) or text.startswith("/"):
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
    for part in (*parts, tag):
        _check_portable(text, part)
    namespace = "/".join(parts[:-1]) or None
    return ModelName(
        namespace=namespace.lower() if namespace else None,
        model=parts[-1].lower(),
        tag=tag.lower(),
    )


def canonical(name: object) -> str:
    """The canonical string of ``name`` (``smollm2`` -> ``smollm2:latest``)."""
    return str(parse_model_name(name))

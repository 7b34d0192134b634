"""Model formats: the plugin kind that knows what a model's files are.

A :class:`ModelFormat` is registered through ``npu_proxy_register_model_formats`` by the
plugin that runs models of that format (the OpenVINO plugin registers ``gguf``, ``ir``
and ``onnx``). It answers every question about its files, so the core never does:

- which files of a hub repository to fetch (:meth:`ModelFormat.select`), refusing a
  repository it cannot serve before anything is downloaded;
- what a local file or folder is (:meth:`ModelFormat.describe`), as a
  :class:`~npu_proxy.engine.types.ModelInfo` whose ``details`` are the format's own
  typed :class:`FormatDetails`;
- what to do once a pull has arrived (:meth:`ModelFormat.prepare`, e.g. convert);
- whether a ``ModelInfo`` of its format is well formed (:meth:`ModelFormat.validate`).

``ModelInfo.format`` holds the registered format's ``name``. The host owns names: the
plugin host refuses a second format of the same name (naming both plugins), and the
model store checks every model it registers or writes against its format here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import InvalidRequestError
from .types import ModelInfo


class ModelFormatError(InvalidRequestError):
    """Files that are not a usable model of a format; the message names no path."""

    code = "invalid_model_files"


class FormatDetails(BaseModel):
    """The facts about a model that only its format knows; subclass it per format.

    Instances are immutable and serialise to JSON (``model_dump(mode="json")``): the
    model store writes them into a model's manifest next to the format's name and reads
    them back through :meth:`ModelFormat.read_details`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    def facts(self) -> dict[str, Any]:
        """Metadata key/values a client may be shown (e.g. a GGUF file's header keys).

        Dialects show these as they are (Ollama's ``/api/show`` ``model_info``);
        the default shows nothing.
        """
        return {}


class UnreadDetails(FormatDetails):
    """Details of a format no loaded plugin reads: kept as they were, so a manifest
    rewritten by this server (``cp``) loses nothing."""

    model_config = ConfigDict(frozen=True, extra="allow")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file a hub repository lists. ``sha256`` is the LFS oid (None for small git files)."""

    path: str
    size: int
    sha256: str | None
    blob_id: str

    @property
    def digest(self) -> str:
        """``sha256:<oid>`` for LFS files, ``sha1:<blob id>`` for plain git files."""
        return f"sha256:{self.sha256}" if self.sha256 else f"sha1:{self.blob_id}"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class HubAlias:
    """A short pull name for a hub repository (``tinyllama`` -> an OpenVINO IR export).

    ``name`` is the canonical ``model:tag``; ``spellings`` are further names that mean
    the same; ``family``, ``parameter_size`` and ``quantization`` are shown when the
    files do not say; ``note`` is advice for users (which device suits the export).
    """

    name: str
    repo: str
    format: str
    family: str = ""
    parameter_size: str = ""
    quantization: str = ""
    spellings: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class HubRequest:
    """One pull as a format sees it: the repository, and what the name asked for.

    ``format`` is set when the name chose one (an alias, or ``hf.co/org/repo:QUANT``,
    Ollama's spelling for a GGUF file); ``variant`` is the tag that picks among a
    repository's files (a quantisation such as ``Q4_K_M``), if any.
    """

    name: str
    repo: str
    revision: str
    format: str | None = None
    variant: str | None = None
    alias: HubAlias | None = None


#: ``peek(file, size)``: the first ``size`` bytes of a listed file (fewer if the file is
#: shorter), at the commit the download will fetch, for formats that must read a header
#: before deciding to fetch a repository. It asks with ``Range`` and never reads more
#: than ``size`` bytes, also from a hub that ignores ``Range``.
Peek = Callable[[RemoteFile, int], bytes]


class ModelFormat(abc.ABC):
    """A kind of model file. Register instances through ``npu_proxy_register_model_formats``.

    Methods may block (file reads, conversions): the core calls them in worker threads.
    Errors a user can cause are :class:`ModelFormatError` (or another
    :class:`~npu_proxy.engine.errors.EngineError`) with a message that names no path.
    """

    #: what ``ModelInfo.format`` holds for models of this format (``"gguf"``); unique
    name: str
    #: the class of this format's ``ModelInfo.details`` (None: its models carry none)
    details_type: type[FormatDetails] | None = None
    #: short pull names for repositories of this format
    aliases: tuple[HubAlias, ...] = ()

    @abc.abstractmethod
    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        """The files of ``listing`` to download for ``request``; None if not this format.

        Called for a repository before anything is downloaded, with every file the hub
        lists. Raise to refuse a repository that holds this format but cannot be served
        (the quantisation asked for is missing, no backend reads the architecture);
        ``peek`` reads the start of a file when the listing alone cannot tell.
        """

    @abc.abstractmethod
    def describe(self, path: Path, name: str) -> ModelInfo | None:
        """``ModelInfo`` (named ``name``) for the model at ``path``; None if not this format.

        ``path`` is a file or a folder: what a user hands ``create``, or the folder a
        pull downloaded :meth:`select`'s files into. Read headers and configuration,
        never whole weights: size and digest are the caller's business. Raise
        :class:`ModelFormatError` for files of this format that are unusable.
        """

    def prepare(self, folder: Path, info: ModelInfo) -> ModelInfo:
        """Make a freshly downloaded model in ``folder`` loadable; return its final info.

        Called once per pull, before the model is listed (a conversion happens here, in
        ``folder``); the default keeps the files as they arrived.
        """
        return info

    def read_details(self, data: Mapping[str, Any]) -> FormatDetails | None:
        """This format's details from their JSON form in a manifest (None if empty).

        Older manifests hand the loose ``extra`` mapping they carried; a format that
        renamed a key accepts the old name here. Raises ``ValueError`` if malformed.
        """
        if self.details_type is None or not data:
            return None
        return self.details_type.model_validate(dict(data))

    def validate(self, info: ModelInfo) -> None:
        """Refuse ``info`` (``ModelFormatError``) if it is not a well-formed model of this
        format; the default checks that its details are of :attr:`details_type`."""
        if info.details is None:
            return
        if self.details_type is None or not isinstance(info.details, self.details_type):
            raise ModelFormatError(
                f"model '{info.name}' carries {type(info.details).__name__}, not the details "
                f"of the {self.name} format"
            )


class ModelFormats:
    """The registered formats, by name, in registration order (the host's registry)."""

    def __init__(self, formats: Iterable[ModelFormat] = ()) -> None:
        self._by_name: dict[str, ModelFormat] = {}
        for fmt in formats:
            if fmt.name in self._by_name:
                raise ValueError(f"two model formats are named {fmt.name!r}")
            self._by_name[fmt.name] = fmt

    def __iter__(self) -> Iterator[ModelFormat]:
        return iter(self._by_name.values())

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def get(self, name: str) -> ModelFormat | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def aliases(self) -> dict[str, HubAlias]:
        """Every alias spelling -> its alias; a spelling two formats claim is an error."""
        found: dict[str, HubAlias] = {}
        for fmt in self:
            for alias in fmt.aliases:
                for spelling in (alias.name, *alias.spellings):
                    other = found.get(spelling)
                    if other is not None and other != alias:
                        raise ValueError(
                            f"the pull alias {spelling!r} is claimed by the {other.format} "
                            f"and {alias.format} formats"
                        )
                    found[spelling] = alias
        return found

    def describe(self, path: Path, name: str) -> ModelInfo:
        """The first format's description of ``path``; ModelFormatError if none reads it."""
        for fmt in self:
            info = fmt.describe(path, name)
            if info is not None:
                return info
        raise ModelFormatError(
            f"no installed model format reads these files (installed: "
            f"{', '.join(self.names()) or 'none'})"
        )

    def read_details(self, format_name: str, data: Mapping[str, Any]) -> FormatDetails | None:
        """Details for a model of ``format_name``, kept unread if no plugin knows it."""
        fmt = self.get(format_name)
        if fmt is not None:
            return fmt.read_details(data)
        return UnreadDetails.model_validate(dict(data)) if data else None

    def validate(self, info: ModelInfo) -> None:
        """Check ``info`` against its format; details need a format that reads them."""
        fmt = self.get(info.format)
        if fmt is not None:
            fmt.validate(info)
        elif info.details is not None and not isinstance(info.details, UnreadDetails):
            raise ModelFormatError(
                f"model '{info.name}' has details of the format '{info.format}', which no "
                f"installed plugin registered (installed: {', '.join(self.names()) or 'none'})"
            )

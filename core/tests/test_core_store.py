"""Model names and the model store: validation, aliases, deletion, leftovers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError, ModelStoreError
from npu_proxy.engine.formats import (
    FormatDetails,
    HubRequest,
    ModelFormat,
    ModelFormatError,
    ModelFormats,
    Peek,
    RemoteFile,
    UnreadDetails,
)
from npu_proxy.engine.names import canonical, parse_model_name
from npu_proxy.engine.store import STAGING_PREFIX, ModelStore
from npu_proxy.engine.types import Capability, ModelInfo, PulledFile, PulledFrom
from pydantic import AliasChoices, Field


@pytest.mark.parametrize(
    ("name", "expected"),
    [("smollm2", "smollm2:latest"), ("SmolLM2:135M", "smollm2:135m"),
     ("library/llama3:8b", "library/llama3:8b"), ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m"),
     ("all-minilm", "all-minilm:latest")],
)
def test_names_are_canonical(name: str, expected: str) -> None:
    assert canonical(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", "   ", "../../etc/passwd", "..", "a/../b", "C:\\x", "C:/x", "/abs/path", "a\\b",
     "nul\x00byte", "cr\rlf\n", "x" * 300, "a/b/c/d", "model:", ":tag", "bad name", 42, None],
)
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidRequestError):
        parse_model_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    # One-letter models read like drive-relative paths ("C:x") but are Ollama names:
    # the name never becomes a path, only its "--"-joined folder does.
    [("x", "x:latest"), ("x:latest", "x:latest"), ("A", "a:latest"), ("C:x", "c:x"),
     ("ns/a:b", "ns/a:b"), ("console", "console:latest"), ("com10", "com10:latest"),
     ("lpt0:x", "lpt0:x"), ("auxiliary.v2", "auxiliary.v2:latest")],
)
def test_one_letter_names_and_near_reserved_names_are_accepted(name: str, expected: str) -> None:
    assert canonical(name) == expected
    assert canonical(expected) == expected  # the canonical form parses again


@pytest.mark.parametrize(
    "name",
    ["victim:latest.", "victim.:latest", "ns./victim", "con", "CON:latest", "prn", "aux:1",
     "nul.txt", "x:nul", "com1", "COM9.model", "lpt1", "lpt9:q4", "ns/con", "con/x",
     "lpt5.x.y:latest"],
)
def test_names_windows_would_alias_are_refused_everywhere(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_model_name(name)


def test_a_trailing_space_is_trimmed_not_kept_in_the_folder() -> None:
    assert parse_model_name("victim:latest ").folder == "victim--latest"


def test_one_letter_models_are_created_copied_and_listed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.register(model("base:1", tmp_path / "elsewhere.gguf"))
    store.copy("base:1", "a")
    store.write(replace(store.resolve("base:1"), name="x"))
    fresh = ModelStore(tmp_path)
    fresh.scan()
    assert {m.name for m in fresh.models()} == {"a:latest", "x:latest"}
    fresh.delete("a")
    assert [m.name for m in fresh.models()] == ["x:latest"]


def test_folder_names_stay_inside_the_store() -> None:
    assert parse_model_name("hf.co/org/repo:q4").folder == "hf.co--org--repo--q4"
    assert "/" not in parse_model_name("a/b:c").folder


def model(name: str, path: Path | None = None) -> ModelInfo:
    return ModelInfo(name=name, format="gguf", family="llama", path=path,
                     capabilities=frozenset({Capability.COMPLETION}), context_length=2048)


def test_copy_delete_and_builtins(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.register(model("base:1", tmp_path / "elsewhere.gguf"))
    copy = store.copy("base:1", "mine")
    assert copy.name == "mine:latest" and store.resolve("mine").path == tmp_path / "elsewhere.gguf"
    with pytest.raises(ModelStoreError):
        store.delete("base:1")
    with pytest.raises(ModelStoreError):
        store.copy("base:1", "BASE:1")
    fresh = ModelStore(tmp_path)
    fresh.scan()
    assert fresh.resolve("mine:latest").family == "llama"  # the manifest survived
    fresh.delete("mine")
    with pytest.raises(ModelNotFoundError):
        fresh.resolve("mine")
    assert not (tmp_path / "mine--latest").exists()


def test_delete_keeps_files_another_name_uses(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    folder = store.folder_for("own:1")
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(b"GGUF")
    store.write(model("own:1", folder / "model.gguf"))
    store.copy("own:1", "alias:1")
    store.delete("own:1")
    assert (folder / "model.gguf").exists()
    assert store.resolve("alias:1").path == folder / "model.gguf"


def test_scan_removes_leftovers_and_skips_broken_manifests(tmp_path: Path) -> None:
    (tmp_path / f"{STAGING_PREFIX}abc").mkdir()
    (tmp_path / f"{STAGING_PREFIX}abc" / "half.gguf").write_bytes(b"partial")
    broken = tmp_path / "broken--latest"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    store = ModelStore(tmp_path)
    store.scan()
    assert not (tmp_path / f"{STAGING_PREFIX}abc").exists()
    assert store.models() == []


# --- typed details, old manifests, imports -------------------------------------------


class NoteDetails(FormatDetails):
    """A format's details; ``note`` was called ``old.note`` in manifests of old."""

    note: str = Field(default="", validation_alias=AliasChoices("note", "old.note"))


class NoteFormat(ModelFormat):
    """``*.note`` files: the first line is the model's family."""

    name = "note"
    details_type = NoteDetails

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        return None

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        if path.suffix != ".note":
            return None
        family = path.read_text().split("\n", 1)[0]
        if not family:
            raise ModelFormatError("the note file is empty")
        return ModelInfo(name, "note", family, frozenset({Capability.COMPLETION}), 512,
                         path=path, details=NoteDetails(note="read"))


#: A manifest as stores written before details were typed: one loose ``extra`` dict
#: holding the hub's provenance, what /api/create stored, and the format's own keys.
OLD_MANIFEST = {
    "name": "old:latest", "format": "note", "family": "llama",
    "capabilities": ["completion"], "context_length": 2048, "size": 10, "digest": "abc",
    "path": "model.note", "parameter_size": "", "quantization_level": "", "architecture": "",
    "modified_at": "2026-01-02T03:04:05+00:00", "source": "hf.co/org/old@c0ffee",
    "embedding_length": 0, "template": "",
    "extra": {
        "repo": "org/old", "revision": "c0ffee",
        "files": [{"path": "model.note", "size": 10, "sha256": "ff" * 32}],
        "system": "Be brief.", "parameters": {"num_ctx": 512}, "license": "MIT",
        "old.note": "kept",
    },
}


def test_old_manifests_still_load(tmp_path: Path) -> None:
    folder = tmp_path / "old--latest"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    store = ModelStore(tmp_path, formats=ModelFormats([NoteFormat()]))
    store.scan()
    info = store.resolve("old")
    assert info.details == NoteDetails(note="kept")
    files = (PulledFile("model.note", 10, "ff" * 32),)
    assert info.pulled == PulledFrom("org/old", "c0ffee", files)
    assert (info.system, info.parameters, info.license) == ("Be brief.", {"num_ctx": 512}, "MIT")
    assert info.path == folder / "model.note"
    # Written again, the manifest has the new shape and reads back the same.
    store.write(info)
    data = json.loads((folder / "manifest.json").read_text())
    assert "extra" not in data and data["details"] == {"note": "kept"}
    fresh = ModelStore(tmp_path, formats=ModelFormats([NoteFormat()]))
    fresh.scan()
    assert fresh.resolve("old") == info


def test_details_of_a_format_no_plugin_reads_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "old--latest"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    store = ModelStore(tmp_path)  # the note format's plugin is not loaded
    store.scan()
    info = store.resolve("old")
    assert isinstance(info.details, UnreadDetails)
    store.copy("old", "again")
    copied = json.loads((tmp_path / "again--latest" / "manifest.json").read_text())
    assert copied["details"] == {"old.note": "kept"}
    with pytest.raises(ModelFormatError, match="no installed plugin"):
        store.write(replace(info, name="other", details=NoteDetails(note="x")))


def test_import_path_asks_the_formats(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", formats=ModelFormats([NoteFormat()]))
    note = tmp_path / "tiny.note"
    note.write_text("llama\nweights")
    info = store.import_path(note, "tiny", adjust=lambda i: replace(i, system="Hi."))
    assert (info.name, info.format, info.family, info.system) == ("tiny:latest", "note", "llama",
                                                                   "Hi.")
    assert info.digest == "sha256:" + hashlib.sha256(b"llama\nweights").hexdigest()
    assert info.size == note.stat().st_size and info.source == "local file"
    assert info.details == NoteDetails(note="read")
    empty = tmp_path / "empty.note"
    empty.write_text("")
    with pytest.raises(ModelFormatError, match="empty"):
        store.import_path(empty, "empty")
    other = tmp_path / "x.txt"
    other.write_text("?")
    with pytest.raises(ModelFormatError, match=r"no installed model format .*\(installed: note\)"):
        store.import_path(other, "x")
    with pytest.raises(InvalidRequestError):
        store.import_path(tmp_path / "missing.note", "missing")
    assert [m.name for m in store.models()] == ["tiny:latest"]


def test_details_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    class OtherDetails(FormatDetails):
        pass

    store = ModelStore(tmp_path, formats=ModelFormats([NoteFormat()]))
    bad = ModelInfo("bad", "note", "x", frozenset(), 1, details=OtherDetails())
    with pytest.raises(ModelFormatError, match="OtherDetails"):
        store.register(bad)

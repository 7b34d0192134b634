"""Model names and the model store: validation, aliases, deletion, leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError, ModelStoreError
from npu_proxy.engine.names import canonical, parse_model_name
from npu_proxy.engine.store import STAGING_PREFIX, ModelStore
from npu_proxy.engine.types import Capability, ModelInfo


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
    ["", "   ", "../../etc/passwd", "..", "a/../b", "C:\\x", "C:x", "/abs/path", "a\\b",
     "nul\x00byte", "cr\rlf\n", "x" * 300, "a/b/c/d", "model:", ":tag", "bad name", 42, None],
)
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidRequestError):
        parse_model_name(name)


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

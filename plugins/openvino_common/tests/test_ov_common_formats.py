"""The OpenVINO plugin's model formats: selecting files from a hub listing, describing
files (one GGUF describer, one set of defaults), the one pooling rule, old manifests."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.formats import HubRequest, ModelFormatError, ModelFormats, RemoteFile
from npu_proxy.engine.store import ModelStore
from npu_proxy.engine.types import DEFAULT_CONTEXT_LENGTH, Capability
from npu_proxy.hub.pull import Puller, PullNotFoundError
from npu_proxy.testing_hub import FakeHub, HubFile
from npu_proxy_openvino.formats import (
    EmbeddingDetails,
    GGUFDetails,
    GGUFFormat,
    IRFormat,
    OnnxEmbeddingFormat,
    describe_gguf,
    openvino_formats,
    read_pooling,
)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(metadata: dict[str, Any], shapes: tuple[tuple[int, ...], ...] = ()) -> bytes:
    """A GGUF v3 header: string and uint32 metadata, tensor infos, no weights."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(metadata))
    for key, value in metadata.items():
        if isinstance(value, str):
            out += _string(key) + struct.pack("<I", 8) + _string(value)
        else:
            out += _string(key) + struct.pack("<II", 4, value)
    for n, shape in enumerate(shapes):
        out += _string(f"t{n}") + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", 3, 0)
    return out + b"\0" * 4096


def tiny_gguf(arch: str = "llama", context: int = 4096) -> bytes:
    return gguf_bytes({"general.architecture": arch, f"{arch}.context_length": context,
                       "general.file_type": 15})


def listing(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(p, 10, None, "b") for p in paths]


def no_peek(remote: RemoteFile, size: int) -> bytes:
    raise AssertionError("this selection needs no peek")


# --- selecting files --------------------------------------------------------------------


def test_each_format_selects_its_files_from_a_listing() -> None:
    request = HubRequest("m:latest", "org/m", "main")
    ir = listing("openvino_model.xml", "openvino_model.bin", "config.json", "README.md",
                 "pics/arch.png", ".gitattributes")
    assert [f.path for f in IRFormat().select(request, ir, no_peek) or []] == [
        "openvino_model.xml", "openvino_model.bin", "config.json"]
    onnx = listing("onnx/model.onnx", "onnx/model_O4.onnx", "config.json", "vocab.txt",
                   "1_Pooling/config.json", "model.safetensors", "pytorch_model.bin")
    assert [f.path for f in OnnxEmbeddingFormat().select(request, onnx, no_peek) or []] == [
        "onnx/model.onnx", "config.json", "vocab.txt", "1_Pooling/config.json"]
    # Not their format: None, so the next format is asked.
    assert IRFormat().select(request, onnx, no_peek) is None
    assert OnnxEmbeddingFormat().select(request, ir, no_peek) is None
    assert GGUFFormat().select(request, ir, no_peek) is None


def test_gguf_selects_the_quantisation_asked_for_after_reading_its_architecture() -> None:
    files = listing("m-Q4_K_M.gguf", "m-Q8_0.gguf", "README.md")
    peeked: list[str] = []

    def peek(remote: RemoteFile, size: int) -> bytes:
        peeked.append(remote.path)
        return tiny_gguf()[:size]

    request = HubRequest("m:q8_0", "org/m", "main", "gguf", "Q8_0")
    assert [f.path for f in GGUFFormat().select(request, files, peek) or []] == ["m-Q8_0.gguf"]
    assert peeked == ["m-Q8_0.gguf"]
    with pytest.raises(PullNotFoundError, match="no Q2_K GGUF file; available: Q4_K_M, Q8_0"):
        GGUFFormat().select(HubRequest("m:q2_k", "org/m", "main", "gguf", "Q2_K"), files, peek)


def test_gguf_refuses_an_architecture_genai_cannot_build() -> None:
    request = HubRequest("m:latest", "org/m", "main", "gguf", "Q4_K_M")
    files = listing("m-Q4_K_M.gguf")
    with pytest.raises(InvalidRequestError, match=r"'mamba' .*llama, qwen2, qwen3"):
        GGUFFormat().select(request, files, lambda remote, size: tiny_gguf("mamba")[:size])
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        GGUFFormat().select(request, files, lambda remote, size: b"<html>")


# --- pulls through the core's downloader (moved from the core's tests) -------------------


@pytest.fixture
def hub() -> Iterator[Any]:
    fake = FakeHub(repos={
        "org/tiny-gguf": {"tiny-Q4_K_M.gguf": HubFile(tiny_gguf()),
                          "tiny-Q8_0.gguf": HubFile(tiny_gguf())},
        "org/mamba-gguf": {"m-Q4_K_M.gguf": HubFile(tiny_gguf("mamba"))},
    })
    with fake.serve() as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


def puller(tmp_path: Path, hub: Any) -> Puller:
    store = ModelStore(tmp_path / "models", formats=ModelFormats(openvino_formats()))
    return Puller(store, endpoint=hub.url)


async def test_pull_a_gguf_quantisation(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    [_ async for _ in p.pull("hf.co/org/tiny-gguf:Q8_0")]
    info = p.store.resolve("hf.co/org/tiny-gguf:q8_0")
    assert info.format == "gguf" and info.path is not None
    assert info.path.name == "tiny-Q8_0.gguf"
    assert info.context_length == 4096 and info.quantization_level == "Q4_K_M"
    assert isinstance(info.details, GGUFDetails)
    with pytest.raises(PullNotFoundError, match="Q4_K_M, Q8_0"):
        [_ async for _ in p.pull("hf.co/org/tiny-gguf:Q2_K")]


async def test_unreadable_gguf_architecture_is_refused_before_download(
    tmp_path: Path, hub: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="mamba"):
        [_ async for _ in puller(tmp_path, hub).pull("hf.co/org/mamba-gguf")]
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert len(downloads) == 1  # only the ranged header probe


def test_the_aliases_resolve_to_openvino_exports(tmp_path: Path) -> None:
    p = Puller(ModelStore(tmp_path, formats=ModelFormats(openvino_formats())),
               endpoint="http://127.0.0.1:9")
    tiny = p.resolve("tinyllama")
    assert (tiny.repo, tiny.format) == ("OpenVINO/TinyLlama-1.1B-Chat-v1.0-int4-ov", "ir")
    assert tiny.alias is not None and "NPU" in tiny.alias.note
    assert p.resolve("bge-small").format == "onnx"


# --- describing files: one describer, one set of defaults --------------------------------


def test_a_gguf_file_is_described_once_with_the_same_defaults(tmp_path: Path) -> None:
    full = tmp_path / "full.gguf"
    full.write_bytes(gguf_bytes({
        "general.architecture": "qwen2", "qwen2.context_length": 32768,
        "qwen2.embedding_length": 896, "general.file_type": 2, "general.size_label": "0.5B",
        "tokenizer.chat_template": "{% if tools %}{% endif %}",
    }, ((896, 1000),)))
    info = GGUFFormat().describe(full, "q:latest")
    assert info is not None
    assert (info.format, info.family, info.architecture) == ("gguf", "qwen2", "qwen2")
    assert (info.context_length, info.embedding_length) == (32768, 896)
    assert (info.parameter_size, info.quantization_level) == ("0.5B", "Q4_0")
    assert info.capabilities == {Capability.COMPLETION, Capability.TOOLS}
    assert info.details == GGUFDetails(
        metadata={"general.architecture": "qwen2", "qwen2.context_length": 32768,
                  "qwen2.embedding_length": 896, "general.file_type": 2,
                  "general.size_label": "0.5B"},
        parameter_count=896_000,
    )
    # What a file does not say is empty, and the context is the core's one default.
    bare = tmp_path / "bare.gguf"
    bare.write_bytes(gguf_bytes({}))
    described = describe_gguf(bare, "bare:latest")
    assert (described.family, described.parameter_size, described.quantization_level) == (
        "", "", "")
    assert described.context_length == DEFAULT_CONTEXT_LENGTH
    # A folder holding one GGUF file (what a pull downloaded) is described the same.
    folder = tmp_path / "pulled"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "m.gguf").write_bytes(full.read_bytes())
    from_folder = GGUFFormat().describe(folder, "q:latest")
    assert from_folder is not None and from_folder.details == info.details
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ModelFormatError, match="truncated"):
        GGUFFormat().describe(truncated, "cut:latest")


def test_an_ir_folder_of_an_encoder_is_an_embedding_model(tmp_path: Path) -> None:
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
        "max_position_embeddings": 512, "quantization_config": {"bits": 8}}))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    info = IRFormat().describe(tmp_path, "e:latest")
    assert info is not None and info.capabilities == {Capability.EMBEDDING}
    assert (info.embedding_length, info.context_length, info.quantization_level) == (
        384, 256, "INT8")
    assert info.details == EmbeddingDetails(pooling="mean", normalize=True, max_length=256)
    assert IRFormat().describe(tmp_path / "config.json", "e:latest") is None


# --- the one pooling rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "modules", "expected"),
    [
        (None, None, ("mean", True)),  # a plain transformer: sentence-transformers' mean
        ({"pooling_mode_mean_tokens": True}, ["Pooling", "Normalize"], ("mean", True)),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ["Pooling"],
         ("cls", False)),
        ({"pooling_mode_lasttoken": True}, ["Pooling", "Normalize"], ("last_token", True)),
        ({"pooling_mode_max_tokens": True}, ["Pooling"], ("mean", False)),
    ],
)
def test_one_pooling_rule_with_mean_as_its_default(
    tmp_path: Path, config: dict[str, bool] | None, modules: list[str] | None,
    expected: tuple[str, bool],
) -> None:
    if config is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if modules is not None:
        (tmp_path / "modules.json").write_text(json.dumps(
            [{"type": f"sentence_transformers.models.{m}"} for m in modules]))
    assert read_pooling(tmp_path) == expected
    assert EmbeddingDetails().pooling == "mean"  # the details' default is the same


# --- manifests users' stores already hold -------------------------------------------------


def test_old_manifests_of_openvino_models_load_typed_details(tmp_path: Path) -> None:
    embed = tmp_path / "bge--latest"
    embed.mkdir()
    (embed / "manifest.json").write_text(json.dumps({
        "name": "bge:latest", "format": "ir", "family": "bert", "capabilities": ["embedding"],
        "context_length": 512, "path": ".",
        "extra": {"repo": "BAAI/bge", "revision": "abc", "files": [], "pooling": "cls",
                  "normalize": True, "openvino.max_length": 512},
    }))
    created = tmp_path / "tiny--latest"
    created.mkdir()
    (created / "manifest.json").write_text(json.dumps({
        "name": "tiny:latest", "format": "gguf", "family": "llama",
        "capabilities": ["completion"], "context_length": 4096, "path": "/elsewhere/t.gguf",
        "extra": {"model_info": {"general.architecture": "llama",
                                 "general.parameter_count": 64000},
                  "system": "Be brief."},
    }))
    store = ModelStore(tmp_path, formats=ModelFormats(openvino_formats()))
    store.scan()
    bge = store.resolve("bge")
    assert bge.details == EmbeddingDetails(pooling="cls", normalize=True, max_length=512)
    assert bge.pulled is not None and bge.pulled.revision == "abc"
    tiny = store.resolve("tiny")
    assert tiny.details == GGUFDetails(metadata={"general.architecture": "llama"},
                                       parameter_count=64000)
    assert tiny.details.facts()["general.parameter_count"] == 64000
    assert tiny.system == "Be brief."

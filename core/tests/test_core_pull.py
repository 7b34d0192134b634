"""Pulling from a local server that speaks the hub protocol: installs, integrity, faults."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from core_test_plugins import SimBackend
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.store import ModelStore
from npu_proxy.hub.pull import Puller, PullError, PullNotFoundError, PullProgress
from npu_proxy.hub.spec import resolve_pull_name
from npu_proxy.testing_hub import FakeHub, HubFile


def tiny_gguf(arch: str = "llama", context: int = 4096) -> bytes:
    """A header-only GGUF file: three metadata keys, no tensors."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    keys = [
        string("general.architecture") + struct.pack("<I", 8) + string(arch),
        string(f"{arch}.context_length") + struct.pack("<I", 4) + struct.pack("<I", context),
        string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 15),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(keys)) + b"".join(keys) + b"\0" * 4096


IR_REPO = {
    "openvino_model.xml": HubFile(b"<net/>" * 100, lfs=False),
    "openvino_model.bin": HubFile(b"\1\2\3\4" * 50_000),
    "config.json": HubFile(json.dumps({"model_type": "llama",
                                       "max_position_embeddings": 2048}).encode(), lfs=False),
    "tokenizer_config.json": HubFile(b'{"chat_template": "{% if tools %}x{% endif %}"}', lfs=False),
    "README.md": HubFile(b"# docs", lfs=False),
}


@pytest.fixture
def hub() -> Any:
    fake = FakeHub(repos={
        "org/tiny-ov": dict(IR_REPO),
        "org/tiny-gguf": {"tiny-Q4_K_M.gguf": HubFile(tiny_gguf()),
                          "tiny-Q8_0.gguf": HubFile(tiny_gguf())},
        "org/mamba-gguf": {"m-Q4_K_M.gguf": HubFile(tiny_gguf("mamba"))},
    })
    with fake.serve() as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


def puller(tmp_path: Path, hub: Any, **kw: Any) -> Puller:
    backend = SimBackend()
    backend.gguf_architectures = frozenset({"llama", "qwen2"})
    store = ModelStore(tmp_path / "models")
    return Puller(store, [backend], endpoint=hub.url, token="hf_secret", **kw)


async def collect(p: Puller, name: str) -> list[PullProgress]:
    return [event async for event in p.pull(name)]


async def test_pull_an_ir_repository(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    events = await collect(p, "org/tiny-ov")
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert statuses[-3:-1] == ["verifying sha256 digest", "writing manifest"]
    progress = [e for e in events if e.status.startswith("pulling ") and e.total]
    assert any(e.completed == e.total for e in progress)
    info = p.store.resolve("org/tiny-ov")
    assert info.format == "ir" and info.context_length == 2048 and info.family == "llama"
    assert "tools" in {c.value for c in info.capabilities}
    assert (info.path / "openvino_model.bin").stat().st_size == 200_000
    assert not (info.path / "README.md").exists()
    fresh = ModelStore(tmp_path / "models")
    fresh.scan()
    assert fresh.resolve("org/tiny-ov:latest").extra["revision"] == hub.commit
    again = await collect(p, "org/tiny-ov")  # already there: no download
    assert [e.status for e in again] == ["pulling manifest", "success"]


async def test_pull_a_gguf_quantisation(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    await collect(p, "hf.co/org/tiny-gguf:Q8_0")
    info = p.store.resolve("hf.co/org/tiny-gguf:q8_0")
    assert info.format == "gguf" and info.path.name == "tiny-Q8_0.gguf"
    assert info.context_length == 4096 and info.quantization_level == "Q4_K_M"
    with pytest.raises(PullNotFoundError, match="Q4_K_M, Q8_0"):
        await collect(p, "hf.co/org/tiny-gguf:Q2_K")


async def test_unreadable_gguf_architecture_is_refused_before_download(
    tmp_path: Path, hub: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="mamba"):
        await collect(puller(tmp_path, hub), "hf.co/org/mamba-gguf")
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert len(downloads) == 1  # only the ranged header probe


async def test_a_corrupt_file_installs_nothing(tmp_path: Path, hub: Any) -> None:
    hub.corrupt.add("openvino_model.bin")
    p = puller(tmp_path, hub)
    with pytest.raises(PullError, match="SHA-256"):
        await collect(p, "org/tiny-ov")
    assert p.store.models() == []
    assert [x.name for x in (tmp_path / "models").iterdir()] == [".locks"]


async def test_a_dropped_connection_fails_and_a_retry_succeeds(tmp_path: Path, hub: Any) -> None:
    hub.drop_after["openvino_model.bin"] = 1000
    p = puller(tmp_path, hub)
    with pytest.raises(PullError):
        await collect(p, "org/tiny-ov")
    assert p.store.models() == []
    hub.drop_after.clear()
    await collect(p, "org/tiny-ov")
    assert p.store.resolve("org/tiny-ov").name == "org/tiny-ov:latest"


async def test_two_concurrent_pulls_end_with_one_copy(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    other = Puller(ModelStore(tmp_path / "models"), [SimBackend()], endpoint=hub.url)
    await asyncio.gather(collect(p, "org/tiny-ov"), collect(other, "org/tiny-ov"))
    folders = [x.name for x in (tmp_path / "models").iterdir() if not x.name.startswith(".")]
    assert folders == ["org--tiny-ov--latest"]
    assert not [x for x in (tmp_path / "models").iterdir() if x.name.startswith(".staging")]


async def test_the_token_never_follows_a_redirect_to_another_host(tmp_path: Path, hub: Any) -> None:
    mirror = FakeHub(repos=hub.repos, commit=hub.commit)
    with mirror.serve() as server:
        hub.redirect_to = server.url
        await collect(puller(tmp_path, hub), "org/tiny-ov")
    assert all(auth for path, auth in hub.requests)  # the configured endpoint got it
    assert mirror.requests and not any(auth for _, auth in mirror.requests)


async def test_unknown_repository_and_bad_names(tmp_path: Path, hub: Any) -> None:
    with pytest.raises(PullNotFoundError):
        await collect(puller(tmp_path, hub), "org/missing")
    for name in ("../../etc", "org/../x", "C:\\models", "nosuchalias"):
        with pytest.raises(InvalidRequestError):
            await collect(puller(tmp_path, hub), name)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_names_resolve() -> None:
    assert resolve_pull_name("tinyllama").repo == "OpenVINO/TinyLlama-1.1B-Chat-v1.0-int4-ov"
    spec = resolve_pull_name("hf.co/Org/Repo-GGUF")
    assert (spec.repo, spec.kind, spec.quant) == ("Org/Repo-GGUF", "gguf", "Q4_K_M")
    assert resolve_pull_name("OpenVINO/phi-2-int4-ov:abc123").revision == "abc123"


async def test_a_pull_killed_mid_download_leaves_nothing_listed_and_a_retry_succeeds(
    tmp_path: Path, hub: Any
) -> None:
    import os
    import signal
    import sys
    import threading

    reached = threading.Event()
    release = threading.Event()

    def hold(path: str) -> None:
        if path == "openvino_model.bin":
            reached.set()
            release.wait(30)

    hub.on_file = hold
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from npu_proxy.engine.store import ModelStore\n"
        "from npu_proxy.hub.pull import Puller\n"
        "async def main():\n"
        "    p = Puller(ModelStore(Path(sys.argv[1])), endpoint=sys.argv[2])\n"
        "    async for _ in p.pull('org/tiny-ov'):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    models = tmp_path / "models"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(models), hub.url
    )
    try:
        assert await asyncio.to_thread(reached.wait, 60), "the child never started downloading"
        assert any(p.name.startswith(".staging") for p in models.iterdir())
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 30)
    finally:
        release.set()
        if child.returncode is None:
            child.kill()
    hub.on_file = None
    store = ModelStore(models)
    store.scan()  # what a server does at startup: the half-download goes, nothing listed
    assert store.models() == []
    assert not any(p.name.startswith(".staging") for p in models.iterdir())
    p = Puller(store, [SimBackend()], endpoint=hub.url)
    assert (await collect(p, "org/tiny-ov"))[-1].status == "success"
    assert store.resolve("org/tiny-ov").name == "org/tiny-ov:latest"

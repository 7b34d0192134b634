"""Pulling from a local server that speaks the hub protocol: installs, integrity, faults.

The downloader knows no model format: the formats here are defined in the test and
handed to the store, as a plugin's ``npu_proxy_register_model_formats`` would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.formats import (
    FormatDetails,
    HubAlias,
    HubRequest,
    ModelFormat,
    ModelFormatError,
    ModelFormats,
    Peek,
    RemoteFile,
)
from npu_proxy.engine.store import ModelStore
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.hub.pull import Puller, PullError, PullNotFoundError, PullPhase, PullProgress
from npu_proxy.testing_hub import FakeHub, HubFile


class FolderDetails(FormatDetails):
    """What the folder format keeps: the config's ``model_type``."""

    model_type: str = ""


class FolderFormat(ModelFormat):
    """A repository with ``weights.bin`` and a ``config.json``; docs are not fetched."""

    name = "folder"
    details_type = FolderDetails
    aliases = (HubAlias("tiny:1b", "org/tiny-ov", "folder", "llama", "1B", "INT4",
                        ("tiny:latest",)),)

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        if not any(f.path == "weights.bin" for f in listing):
            return None
        return [f for f in listing if not f.path.endswith(".md")]

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        if not (path / "weights.bin").is_file():
            return None
        config = json.loads((path / "config.json").read_text())
        template = json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
        capabilities = {Capability.COMPLETION}
        if "tools" in template:
            capabilities.add(Capability.TOOLS)
        return ModelInfo(name, "folder", config["model_type"], frozenset(capabilities),
                         config["max_position_embeddings"], path=path, template=template,
                         details=FolderDetails(model_type=config["model_type"]))


class BlobFormat(ModelFormat):
    """Single ``.blob`` files named by variant, e.g. ``tiny-Q8_0.blob``; the first line says
    ``ARCH=name`` and only ``llama`` is served. Registered as ``gguf``, the format that
    ``hf.co/org/repo:VARIANT`` names ask for."""

    name = "gguf"

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        blobs = [f for f in listing if f.path.endswith(".blob")]
        if not blobs:
            return None
        chosen = [f for f in blobs if (request.variant or "").lower() in f.path.lower()]
        if not chosen:
            variants = sorted(f.path.rsplit("-", 1)[-1].removesuffix(".blob") for f in blobs)
            raise PullNotFoundError(f"no {request.variant} file; available: {', '.join(variants)}")
        arch = peek(chosen[0], 16).split(b"\n", 1)[0].removeprefix(b"ARCH=").decode()
        if arch != "llama":
            raise InvalidRequestError(f"the architecture '{arch}' is not served", param="model")
        return chosen[:1]

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        found = list(path.rglob("*.blob")) if path.is_dir() else [path]
        if len(found) != 1 or found[0].suffix != ".blob":
            return None
        head = found[0].read_bytes()[:16]
        if not head.startswith(b"ARCH="):
            raise ModelFormatError("not a blob file")
        variant = found[0].stem.rsplit("-", 1)[-1]
        return ModelInfo(name, "gguf", "llama", frozenset({Capability.COMPLETION}), 4096,
                         path=found[0], quantization_level=variant)


def blob(arch: str = "llama") -> bytes:
    return f"ARCH={arch}\n".encode() + b"\0" * 4096


IR_REPO = {
    "weights.bin": HubFile(b"\1\2\3\4" * 50_000),
    "config.json": HubFile(json.dumps({"model_type": "llama",
                                       "max_position_embeddings": 2048}).encode(), lfs=False),
    "tokenizer_config.json": HubFile(b'{"chat_template": "{% if tools %}x{% endif %}"}', lfs=False),
    "README.md": HubFile(b"# docs", lfs=False),
}


def formats() -> ModelFormats:
    return ModelFormats([FolderFormat(), BlobFormat()])


@pytest.fixture
def hub() -> Any:
    fake = FakeHub(repos={
        "org/tiny-ov": dict(IR_REPO),
        "org/tiny-gguf": {"tiny-Q4_K_M.blob": HubFile(blob()), "tiny-Q8_0.blob": HubFile(blob())},
        "org/mamba-gguf": {"m-Q4_K_M.blob": HubFile(blob("mamba"))},
        "org/pictures": {"cat.png": HubFile(b"\x89PNG")},
    })
    with fake.serve() as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


def puller(tmp_path: Path, hub: Any, **kw: Any) -> Puller:
    store = ModelStore(tmp_path / "models", formats=formats())
    return Puller(store, endpoint=hub.url, token="hf_secret", **kw)


async def collect(p: Puller, name: str) -> list[PullProgress]:
    return [event async for event in p.pull(name)]


async def test_pull_an_ir_repository(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    events = await collect(p, "org/tiny-ov")
    phases = [e.phase for e in events]
    assert phases[0] == PullPhase.LISTING and phases[-1] == PullPhase.DONE
    assert phases[-3:-1] == [PullPhase.VERIFYING, PullPhase.INSTALLING]
    progress = [e for e in events if e.phase == PullPhase.DOWNLOADING and e.file]
    assert any(e.file and e.completed == e.file.size for e in progress)
    info = p.store.resolve("org/tiny-ov")
    assert info.format == "folder" and info.context_length == 2048 and info.family == "llama"
    assert "tools" in {c.value for c in info.capabilities}
    assert (info.path / "weights.bin").stat().st_size == 200_000
    assert not (info.path / "README.md").exists()
    fresh = ModelStore(tmp_path / "models", formats=formats())
    fresh.scan()
    stored = fresh.resolve("org/tiny-ov:latest")
    assert stored.pulled and stored.pulled.revision == hub.commit
    assert stored.pulled.repo == "org/tiny-ov" and len(stored.pulled.files) == 3
    assert stored.details == FolderDetails(model_type="llama")  # typed, round-tripped
    again = await collect(p, "org/tiny-ov")  # already there: no download
    assert [e.phase for e in again] == [PullPhase.LISTING, PullPhase.DONE]


async def test_a_format_selects_one_variant_and_describes_it(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    await collect(p, "hf.co/org/tiny-gguf:Q8_0")
    info = p.store.resolve("hf.co/org/tiny-gguf:q8_0")
    assert info.format == "gguf" and info.path and info.path.name == "tiny-Q8_0.blob"
    assert info.context_length == 4096 and info.quantization_level == "Q8_0"
    assert info.source == f"hf.co/org/tiny-gguf@{hub.commit}"
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert not any("Q4_K_M" in path for path in downloads)
    with pytest.raises(PullNotFoundError, match="Q4_K_M, Q8_0"):
        await collect(p, "hf.co/org/tiny-gguf:Q2_K")


async def test_a_format_refuses_a_repository_before_download(tmp_path: Path, hub: Any) -> None:
    with pytest.raises(InvalidRequestError, match="mamba"):
        await collect(puller(tmp_path, hub), "hf.co/org/mamba-gguf")
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert len(downloads) == 1  # only the ranged peek at the file's first bytes
    assert not (tmp_path / "models").exists()  # refused before the store was touched


async def test_a_repository_no_format_reads_is_refused(tmp_path: Path, hub: Any) -> None:
    with pytest.raises(PullError, match=r"no model of an installed format \(folder, gguf\)"):
        await collect(puller(tmp_path, hub), "org/pictures")
    bare = Puller(ModelStore(tmp_path / "bare"), endpoint=hub.url)
    with pytest.raises(PullError, match="no installed plugin reads gguf models"):
        await collect(bare, "hf.co/org/tiny-gguf:Q8_0")


async def test_an_alias_a_format_offers_fills_in_what_the_files_do_not_say(
    tmp_path: Path, hub: Any
) -> None:
    p = puller(tmp_path, hub)
    await collect(p, "tiny")
    info = p.store.resolve("tiny:1b")
    assert (info.parameter_size, info.quantization_level) == ("1B", "INT4")
    assert p.store.models() == [info]


async def test_a_corrupt_file_installs_nothing(tmp_path: Path, hub: Any) -> None:
    hub.corrupt.add("weights.bin")
    p = puller(tmp_path, hub)
    with pytest.raises(PullError, match="SHA-256"):
        await collect(p, "org/tiny-ov")
    assert p.store.models() == []
    assert [x.name for x in (tmp_path / "models").iterdir()] == [".locks"]


async def test_a_dropped_connection_fails_and_a_retry_succeeds(tmp_path: Path, hub: Any) -> None:
    hub.drop_after["weights.bin"] = 1000
    p = puller(tmp_path, hub)
    with pytest.raises(PullError):
        await collect(p, "org/tiny-ov")
    assert p.store.models() == []
    hub.drop_after.clear()
    await collect(p, "org/tiny-ov")
    assert p.store.resolve("org/tiny-ov").name == "org/tiny-ov:latest"


async def test_two_concurrent_pulls_end_with_one_copy(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    other = Puller(ModelStore(tmp_path / "models", formats=formats()), endpoint=hub.url)
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


def test_names_resolve(tmp_path: Path) -> None:
    p = Puller(ModelStore(tmp_path, formats=formats()), endpoint="http://127.0.0.1:9")
    assert p.resolve("tiny").repo == "org/tiny-ov"
    assert p.resolve("tiny").format == "folder"
    spec = p.resolve("hf.co/Org/Repo-GGUF")
    assert (spec.repo, spec.format, spec.variant) == ("Org/Repo-GGUF", "gguf", "Q4_K_M")
    assert p.resolve("OpenVINO/phi-2-int4-ov:abc123").revision == "abc123"
    with pytest.raises(InvalidRequestError, match=r"an alias \(tiny\)"):
        p.resolve("nosuchalias")


def test_two_formats_claiming_one_alias_are_refused() -> None:
    class Other(FolderFormat):
        name = "other"
        aliases = (HubAlias("tiny:1b", "else/where", "other"),)

    with pytest.raises(ValueError, match="'tiny:1b' is claimed by the folder and other"):
        ModelFormats([FolderFormat(), Other()]).aliases()


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
        if path == "weights.bin":
            reached.set()
            release.wait(30)

    hub.on_file = hold
    script = (
        "import asyncio, importlib.util, sys\n"
        "from pathlib import Path\n"
        "from npu_proxy.engine.store import ModelStore\n"
        "from npu_proxy.hub.pull import Puller\n"
        "spec = importlib.util.spec_from_file_location('pull_tests', sys.argv[3])\n"
        "tests = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(tests)\n"
        "async def main():\n"
        "    store = ModelStore(Path(sys.argv[1]), formats=tests.formats())\n"
        "    p = Puller(store, endpoint=sys.argv[2])\n"
        "    async for _ in p.pull('org/tiny-ov'):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    models = tmp_path / "models"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(models), hub.url, __file__
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
    store = ModelStore(models, formats=formats())
    store.scan()  # what a server does at startup: the half-download goes, nothing listed
    assert store.models() == []
    assert not any(p.name.startswith(".staging") for p in models.iterdir())
    p = Puller(store, endpoint=hub.url)
    assert (await collect(p, "org/tiny-ov"))[-1].phase == PullPhase.DONE
    assert store.resolve("org/tiny-ov").name == "org/tiny-ov:latest"


async def test_the_peek_reads_the_download_s_commit_and_stops_at_its_bound(
    tmp_path: Path, hub: Any
) -> None:
    # A hub that ignores Range answers the peek with the whole file: 300 MiB, made as
    # it is sent. The peek stops reading at its bound (16 bytes, one block on the wire).
    big = 300 << 20
    hub.repos["org/big-gguf"] = {"big-Q4_K_M.blob": HubFile(blob("mamba"), padding=big)}
    hub.ignore_range = True
    with pytest.raises(InvalidRequestError, match="mamba"):
        await collect(puller(tmp_path, hub), "hf.co/org/big-gguf")
    sent = hub.sent["big-Q4_K_M.blob"]
    assert 0 < sent < 32 << 20, sent  # socket buffers at most, not the 300 MiB file
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert downloads == [f"/org/big-gguf/resolve/{hub.commit}/big-Q4_K_M.blob"]


async def test_the_peek_and_the_download_read_one_revision(tmp_path: Path, hub: Any) -> None:
    p = puller(tmp_path, hub)
    await collect(p, "hf.co/org/tiny-gguf:Q8_0")
    downloads = [path for path, _ in hub.requests if "/resolve/" in path]
    assert len(downloads) == 2  # the peek, then the download
    assert downloads == [f"/org/tiny-gguf/resolve/{hub.commit}/tiny-Q8_0.blob"] * 2
    assert p.store.resolve("hf.co/org/tiny-gguf:q8_0").pulled.revision == hub.commit  # type: ignore[union-attr]


def test_the_fake_hub_lists_git_files_by_their_real_blob_id() -> None:
    from huggingface_hub.utils.sha import git_hash
    from npu_proxy.testing_hub import git_blob_id

    data = IR_REPO["config.json"].content()
    assert IR_REPO["config.json"].blob_id() == git_blob_id(data) == git_hash(data)


async def test_a_corrupt_git_file_installs_nothing(tmp_path: Path, hub: Any) -> None:
    # config.json is kept in git, not LFS: its size is right, its blob id is not.
    hub.corrupt.add("config.json")
    p = puller(tmp_path, hub)
    with pytest.raises(PullError, match=r"config\.json does not match its git blob id"):
        await collect(p, "org/tiny-ov")
    assert p.store.models() == []
    assert [x.name for x in (tmp_path / "models").iterdir()] == [".locks"]
    hub.corrupt.clear()
    assert (await collect(p, "org/tiny-ov"))[-1].phase == PullPhase.DONE


SENTINEL = "s3cr3t-sentinel"


async def test_credentials_in_the_endpoint_are_never_shown(
    tmp_path: Path, hub: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    store = ModelStore(tmp_path / "models", formats=formats())
    # an unreachable host (nothing listens on port 9), then the local hub itself
    monkeypatch.setenv("HF_ENDPOINT", f"http://user:{SENTINEL}@127.0.0.1:9")
    unreachable = Puller(store)
    with pytest.raises(PullError) as failed:
        await collect(unreachable, "org/tiny-ov")
    assert "127.0.0.1:9" in failed.value.message and SENTINEL not in failed.value.message
    host = hub.url.split("://", 1)[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://user:{SENTINEL}@{host}")
    served = Puller(store)
    with pytest.raises(PullNotFoundError) as missing:
        await collect(served, "org/missing")
    progress = await collect(served, "org/tiny-ov")
    shown = [str(failed.value), str(missing.value), *map(repr, progress),
             served.shown_endpoint, *(r.getMessage() for r in caplog.records)]
    assert any(host in line for line in shown)
    assert not [line for line in shown if SENTINEL in line]
    assert caplog.records  # the pull's request lines were logged, and redacted


def test_urls_lose_user_info_and_token_like_query_values() -> None:
    from npu_proxy.logs import SafeFormatter
    from npu_proxy.redaction import redact_url, redact_urls

    assert redact_url("http://u:pw@h:81/p?token=x&rev=main") == "http://h:81/p?token=REDACTED&rev=main"
    assert redact_url("https://cdn/x?X-Amz-Signature=abc&a=1") == "https://cdn/x?X-Amz-Signature=REDACTED&a=1"
    assert redact_url("https://huggingface.co/org/repo") == "https://huggingface.co/org/repo"
    assert redact_urls("GET 'http://a:b@h/x' then ftp://c@d/") == "GET 'http://h/x' then ftp://d/"
    import logging
    import sys

    try:
        raise ConnectionError(f"for url http://u:{SENTINEL}@h/x")
    except ConnectionError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "to http://u:%s@h", (SENTINEL,),
                                   sys.exc_info())
    text = SafeFormatter("%(message)s").format(record)
    assert "http://h" in text and "ConnectionError" in text and SENTINEL not in text

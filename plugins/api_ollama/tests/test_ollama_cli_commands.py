"""The model commands against a live server in mock mode, through click's CliRunner."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from npu_proxy.hub.pull import Puller
from npu_proxy.testing import LiveServer, free_port, make_app, test_settings
from npu_proxy.testing_hub import FakeHub, HubFile
from npu_proxy_ollama import cli as ollama_cli
from npu_proxy_ollama.cli import COMMANDS, server_url

IR_REPO = {
    "openvino_model.xml": HubFile(b"<net/>" * 100, lfs=False),
    "openvino_model.bin": HubFile(bytes(range(256)) * 3_000),
    "config.json": HubFile(
        json.dumps({"model_type": "llama", "max_position_embeddings": 2048}).encode(), lfs=False
    ),
}


def header_only_gguf(arch: str = "llama") -> bytes:
    """A GGUF file with an architecture, a context length and a file type; no tensors."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    keys = [
        string("general.architecture") + struct.pack("<I", 8) + string(arch),
        string(f"{arch}.context_length") + struct.pack("<II", 4, 4096),
        string("general.file_type") + struct.pack("<II", 4, 15),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(keys)) + b"".join(keys)


@dataclass
class ServedHub(FakeHub):
    """A fake hub and the URL it is served at."""

    url: str = ""


@pytest.fixture
def hub() -> Iterator[ServedHub]:
    fake = ServedHub(repos={"org/tiny-ov": dict(IR_REPO)})
    with fake.serve() as served:
        fake.url = served.url
        yield fake


@pytest.fixture
def server(tmp_path: Path, hub: ServedHub) -> Iterator[LiveServer]:
    """Mock mode, the Ollama dialect, pulls from ``hub``."""
    from npu_proxy_openvino import formats  # what org/tiny-ov holds: OpenVINO IR

    app = make_app(test_settings(tmp_path), ["mock", "ollama"], {"formats": formats})
    with LiveServer(app) as live:
        ctx = live.ctx
        ctx.puller = Puller(ctx.store, endpoint=hub.url)
        yield live


@pytest.fixture
def cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli("list")``: run a command against ``server`` (via NPU_PROXY_URL)."""
    monkeypatch.setenv("NPU_PROXY_URL", server.url)
    monkeypatch.delenv("NPU_PROXY_API_KEY", raising=False)
    commands = {c.name: c for c in COMMANDS}

    def invoke(name: str, *args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(commands[name], list(args), input=stdin)

    return invoke


def test_every_command_is_exported_once() -> None:
    names = [c.name for c in COMMANDS]
    assert names == ["pull", "list", "ls", "show", "rm", "cp", "ps", "create", "run"]


def test_the_server_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NPU_PROXY_URL", raising=False)
    monkeypatch.delenv("NPU_PROXY_PORT", raising=False)
    assert server_url() == "http://127.0.0.1:11435"
    monkeypatch.setenv("NPU_PROXY_PORT", "9999")
    assert server_url() == "http://127.0.0.1:9999"
    monkeypatch.setenv("NPU_PROXY_URL", "http://box:1234/")
    assert server_url() == "http://box:1234"
    assert server_url("localhost:5") == "http://localhost:5"


def test_pull_prints_one_line_per_file_and_phase_then_lists_and_answers(cli: Any) -> None:
    result = cli("pull", "org/tiny-ov")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    big = IR_REPO["openvino_model.bin"]
    assert f"pulling {big.sha256()[:12]} (768 KB)" in lines
    assert len(lines) == 3 + 1 + len(IR_REPO)  # no redrawn progress in a pipe
    assert "\r" not in result.output

    listing = cli("list")
    assert listing.exit_code == 0
    assert "org/tiny-ov:latest" in listing.output
    reply = cli("run", "org/tiny-ov", "Say hi")
    assert reply.exit_code == 0, reply.output
    assert reply.output.strip()


def test_list_and_ls_print_an_aligned_table(cli: Any, server: LiveServer) -> None:
    result = cli("list")
    assert result.exit_code == 0
    header, *rows = result.output.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    by_name = {row.split()[0]: row for row in rows}
    mock = by_name["mock:latest"]
    digest = server.ctx.store.resolve("mock").digest.removeprefix("sha256:")
    assert mock.split()[1] == digest[:12]
    assert "1.0 MB" in mock and mock.endswith("ago")
    # Columns line up: every row's ID starts where the header's does.
    assert {row.index(row.split()[1]) for row in rows} == {header.index("ID")}
    assert cli("ls").output == result.output


def test_show_prints_facts_and_json(cli: Any) -> None:
    text = cli("show", "mock")
    assert text.exit_code == 0
    assert "Model" in text.output and "Capabilities" in text.output
    assert "context length      8192" in text.output
    assert "completion" in text.output and "tools" in text.output
    as_json = cli("show", "mock-embed", "--json")
    assert json.loads(as_json.output)["capabilities"] == ["embedding"]


def test_cp_then_rm(cli: Any) -> None:
    copied = cli("cp", "mock", "mine:v1")
    assert copied.exit_code == 0 and copied.output == "copied 'mock' to 'mine:v1'\n"
    assert "mine:v1" in cli("list").output
    removed = cli("rm", "mine:v1")
    assert removed.exit_code == 0 and removed.output == "deleted 'mine:v1'\n"
    assert "mine:v1" not in cli("list").output


def test_rm_of_several_reports_each_and_fails_if_one_failed(cli: Any) -> None:
    cli("cp", "mock", "one")
    cli("cp", "mock", "two")
    result = cli("rm", "one", "ghost", "two")
    assert result.exit_code == 1
    assert "deleted 'one'" in result.stdout and "deleted 'two'" in result.stdout
    assert "Error: model 'ghost' not found" in result.stderr


def test_ps_shows_the_device_and_until(cli: Any) -> None:
    empty = cli("ps")
    assert empty.output.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert cli("run", "mock", "hello").exit_code == 0
    header, row = cli("ps").output.splitlines()
    assert row.startswith("mock:latest")
    assert "100% MOCK" in row and row.endswith("from now")
    assert row.index("100% MOCK") == header.index("PROCESSOR")


def test_create_from_a_gguf_file(cli: Any, tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(header_only_gguf())
    result = cli("create", "tiny", "--from", str(gguf))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "success"
    shown = json.loads(cli("show", "tiny", "--json").output)
    assert shown["details"]["format"] == "gguf"
    assert shown["model_info"]["llama.context_length"] == 4096


def test_create_from_a_missing_file_is_a_clear_error(cli: Any, tmp_path: Path) -> None:
    result = cli("create", "tiny", "--from", str(tmp_path / "missing.gguf"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: from must name a model")


def test_run_with_a_prompt_streams_one_answer(cli: Any, server: LiveServer) -> None:
    result = cli("run", "mock", "What is an NPU?")
    assert result.exit_code == 0
    assert result.output.strip()
    prompts = server.ctx.engine.backends["MOCK"].counters.prompts
    assert len(prompts) == 1 and "What is an NPU?" in prompts[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "ghost"), "Error: model 'ghost' not found"),
        (("run", "ghost", "hi"), "Error: model 'ghost' not found: see `npu-proxy list`"),
        (("rm", "ghost"), "Error: model 'ghost' not found"),
        (("cp", "ghost", "other"), "Error: model 'ghost' not found"),
        (("pull", "org/missing"), "Error: pull model manifest: file does not exist"),
        (("pull", "nosuchalias"), "Error: unknown model 'nosuchalias': use an alias"),
        (("pull", "../../etc"), "Error: invalid model name '../../etc'"),
        (("show", "a/../b"), "Error: invalid model name 'a/../b'"),
        (("run", "mock-embed", "hi"), "Error: 'mock-embed' is an embedding model"),
    ],
)
def test_errors_are_one_line_and_exit_1(cli: Any, args: tuple[str, ...], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_pull_reports_no_space_left(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    full = SimpleNamespace(total=10, used=10, free=10)
    monkeypatch.setattr("shutil.disk_usage", lambda path: full)
    result = cli("pull", "org/tiny-ov")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no space left on device")
    assert "org/tiny-ov" not in cli("list").output


def test_a_failure_mid_pull_is_an_error_line(cli: Any, hub: ServedHub) -> None:
    hub.corrupt.add("openvino_model.bin")
    result = cli("pull", "org/tiny-ov")
    assert result.exit_code == 1
    assert "SHA-256" in result.stderr
    assert "success" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("pull", "tinyllama"),
        ("list",),
        ("ls",),
        ("show", "x"),
        ("rm", "x"),
        ("cp", "x", "y"),
        ("ps",),
        ("create", "x", "--from", "y"),
        ("run", "x", "hi"),
    ],
)
def test_server_not_running(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.delenv("NPU_PROXY_URL", raising=False)
    command = {c.name: c for c in COMMANDS}[args[0]]
    result = CliRunner().invoke(command, [*args[1:], "--url", url])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: could not connect to npu-proxy at {url}: is it running? "
        "start it with `npu-proxy serve`\n"
    )


def test_the_api_key_is_sent_as_a_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = test_settings(tmp_path, api_key="s3cret-key")
    with LiveServer(make_app(settings, ["mock", "ollama"])) as live:
        monkeypatch.delenv("NPU_PROXY_API_KEY", raising=False)
        refused = CliRunner().invoke(ollama_cli.list_models, ["--url", live.url])
        assert refused.exit_code == 1
        assert "NPU_PROXY_API_KEY" in refused.stderr
        monkeypatch.setenv("NPU_PROXY_API_KEY", "s3cret-key")
        allowed = CliRunner().invoke(ollama_cli.list_models, ["--url", live.url])
        assert allowed.exit_code == 0 and "mock:latest" in allowed.output
        assert httpx.get(live.url + "/api/tags").status_code == 401

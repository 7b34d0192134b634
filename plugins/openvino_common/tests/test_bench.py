"""``npu-proxy bench`` on this machine's CPU with the embedded models, and on an NPU
through the imitation of OpenVINO on NPU (no NPU here).

The command runs as users run it (click, asyncio, the real backends) with the plugins
handed in through the click context; the backends share the session's compiled
pipelines so each test costs seconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from npu_proxy.checks import HOST_KEY
from npu_proxy.cli import main
from npu_proxy.engine.backend import Backend
from npu_proxy.settings import Settings
from npu_proxy.testing import backend_plugin, make_host
from npu_proxy_openvino.testing import (
    DeviceImitation,
    FakeCore,
    shared_batching_factory,
    shared_pipeline_factory,
    stepping_here,
)
from npu_proxy_openvino_cpu import CpuBackend
from npu_proxy_openvino_npu import NpuBackend, NpuSettings


@pytest.fixture
def cpu(ov_settings: Settings, cpu_llm_pipeline: Any, cpu_batching_pipeline: Any) -> CpuBackend:
    return CpuBackend(ov_settings, ov_settings=stepping_here(),
                      pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline),
                      batching_factory=shared_batching_factory(cpu_batching_pipeline))


@pytest.fixture(autouse=True)
def store(ov_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the settings from the environment: the session's model store."""
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(ov_settings.model_path))


def bench(backend: Backend, *args: str) -> Result:
    host = make_host(["openvino"], {"device": backend_plugin(backend)})
    return CliRunner().invoke(main, ["bench", *args], obj={HOST_KEY: host})


def records(result: Result, kind: str) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    found = [r for r in json.loads(result.stdout)["records"] if r["kind"] == kind]
    assert found, f"no {kind} record in {result.stdout}"
    return found


def positive(stat: dict[str, Any] | None) -> bool:
    return stat is not None and 0 < stat["min"] <= stat["median"] <= stat["max"]


def test_every_workload_on_the_cpu_gives_positive_figures_and_the_asked_counts(
    cpu: CpuBackend,
) -> None:
    result = bench(cpu, "--device", "CPU", "--prompt", "64", "--gen", "4", "--parallel",
                   "1,2", "--workload", "all", "--turns", "2", "--texts", "3", "--reps", "1",
                   "--json")
    generation = records(result, "generation")
    assert [(r["test"], r["parallel"], r["requests"]) for r in generation] == [
        ("pp64 tg4", 1, 1), ("pp64 tg4", 2, 2)]
    for record in generation:
        assert (record["prompt_tokens"], record["completion_tokens"]) == (64, 4)
        assert (record["target"], record["target_kind"]) == ("CPU", "device")
        assert (record["model"], record["quantization"]) == ("smollm2:135m", "Q4_1")
        for key in ("ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s",
                    "total_tokens_per_s"):
            assert positive(record[key]), key
        machine = record["machine"]
        assert machine["openvino"] and machine["cpu"] and "CPU" in machine["devices"]
        assert "on_battery" in machine
    cold, warm = records(result, "agent")
    assert (cold["test"], warm["test"]) == ("agent turn 1", "agent turns 2-2")
    assert warm["prompt_tokens"] > cold["prompt_tokens"] > 0  # the history grew
    assert positive(cold["ttft_s"]) and positive(warm["ttft_s"])
    [embedding] = records(result, "embedding")
    assert (embedding["model"], embedding["texts"], embedding["requests"]) == (
        "all-minilm:latest", 3, 1)
    assert positive(embedding["texts_per_s"])
    loads = {r["model"]: r["loads"] for r in records(result, "load")}
    assert len(loads["smollm2:135m"]) == 2 and len(loads["all-minilm:latest"]) == 1
    assert all(load["seconds"] > 0 for load in loads["smollm2:135m"])


def test_the_table_shows_ttft_prefill_and_decode_per_test(cpu: CpuBackend) -> None:
    result = bench(cpu, "--device", "CPU", "--prompt", "64", "--gen", "4", "--reps", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "OpenVINO" in lines[0]
    header = next(line for line in lines if "TTFT s" in line).split()
    assert header[:7] == ["target", "model", "quant", "test", "par", "prompt", "gen"]
    [row] = [line for line in lines if line.startswith("CPU ") and "pp64" in line]
    cells = row.split()
    assert cells[:8] == ["CPU", "smollm2:135m", "Q4_1", "pp64", "tg4", "1", "64", "4"]
    assert cells[-1] == "2"  # two requests measured
    assert any("first load s" in line for line in lines)


def test_markdown_is_a_pipe_table(cpu: CpuBackend) -> None:
    result = bench(cpu, "--device", "CPU", "--prompt", "64", "--gen", "4", "--reps", "1",
                   "--markdown")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("**Machine**: ")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| CPU ")]
    assert rows and all(line.endswith(" |") for line in rows)


@pytest.fixture
def imitation(cpu_llm_pipeline: Any) -> DeviceImitation:
    return DeviceImitation(cpu_llm_pipeline)


def npu(settings: Settings, imitation: DeviceImitation, max_prompt_len: int) -> NpuBackend:
    return NpuBackend(settings, npu_settings=NpuSettings(max_prompt_len=max_prompt_len),
                      pipeline_factory=imitation, core_factory=lambda: FakeCore(["CPU", "NPU"]))


def test_the_npu_reports_its_compile_times_with_the_compile_cache(
    ov_settings: Settings, imitation: DeviceImitation
) -> None:
    result = bench(npu(ov_settings, imitation, 256), "--device", "NPU", "--prompt", "64",
                   "--gen", "4", "--reps", "1", "--json")
    [load] = records(result, "load")
    assert load["target"] == "NPU" and len(load["loads"]) == 2
    assert all(t["seconds"] > 0 for t in load["loads"])
    # the imitation writes no blob: the cache the NPU compiles into is empty both times
    assert [t["compile_cache_before"] for t in load["loads"]] == ["empty", "empty"]
    assert [call[1] for call in imitation.calls] == ["NPU", "NPU"]  # compiled twice
    [record] = records(result, "generation")
    assert (record["target"], record["prompt_tokens"], record["completion_tokens"]) == (
        "NPU", 64, 4)
    assert record["target_facts"]["max_parallel"] == 1


def test_a_prompt_over_the_npu_limit_is_refused_naming_the_setting(
    ov_settings: Settings, imitation: DeviceImitation
) -> None:
    result = bench(npu(ov_settings, imitation, 64), "--device", "NPU", "--prompt", "128",
                   "--gen", "4", "--reps", "1")
    assert result.exit_code == 1
    assert "NPU_PROXY_MAX_PROMPT_LEN" in result.output and "64" in result.output
    assert "Traceback" not in result.output
    assert imitation.calls == []  # refused before anything was compiled


def test_a_generation_past_the_npu_context_is_refused_naming_the_setting(
    ov_settings: Settings, imitation: DeviceImitation
) -> None:
    # MAX_PROMPT_LEN 64 + MIN_RESPONSE_LEN 128: a 64-token prompt leaves 128 to generate
    result = bench(npu(ov_settings, imitation, 64), "--device", "NPU", "--prompt", "64",
                   "--gen", "200", "--reps", "1")
    assert result.exit_code == 1
    assert "needs 264 tokens, more than the 192 tokens of context NPU has" in result.output
    assert "set NPU_PROXY_MAX_PROMPT_LEN=264 or more" in result.output
    assert imitation.calls == []


def test_an_absent_device_asked_for_by_name_is_an_error(ov_settings: Settings,
                                                        imitation: DeviceImitation) -> None:
    backend = NpuBackend(ov_settings, pipeline_factory=imitation,
                         core_factory=lambda: FakeCore(["CPU"]))
    result = bench(backend, "--device", "NPU", "--reps", "1")
    assert result.exit_code == 1
    assert "NPU not found; OpenVINO sees: CPU" in result.output

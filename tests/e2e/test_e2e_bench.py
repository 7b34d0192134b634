"""``npu-proxy bench --url`` against a second npu-proxy server (real HTTP, the OpenAI
dialect, the real CPU backend): the same records and fields as a device measured in
the bench's own process, side by side in one run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from npu_proxy.checks import HOST_KEY
from npu_proxy.cli import main
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, backend_plugin, make_host
from npu_proxy_openvino.testing import (
    shared_batching_factory,
    shared_pipeline_factory,
    stepping_here,
)
from npu_proxy_openvino_cpu import CpuBackend


def test_a_server_by_url_gets_the_same_fields_as_the_device(
    real_server: LiveServer, ov_settings: Settings, cpu_llm_pipeline: Any,
    cpu_batching_pipeline: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NPU_PROXY_MODEL_PATH", str(ov_settings.model_path))
    cpu = CpuBackend(ov_settings, ov_settings=stepping_here(),
                     pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline),
                     batching_factory=shared_batching_factory(cpu_batching_pipeline))
    host = make_host(["openvino"], {"device": backend_plugin(cpu)})
    result = CliRunner().invoke(
        main, ["bench", "--device", "CPU", "--url", real_server.url, "--prompt", "64",
               "--gen", "4", "--workload", "gen,embed", "--texts", "2", "--reps", "1",
               "--json"],
        obj={HOST_KEY: host})
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    by_target: dict[str, dict[str, dict[str, Any]]] = {}
    for record in document["records"]:
        by_target.setdefault(record["target_kind"], {})[record["kind"]] = record
    device, server = by_target["device"], by_target["url"]
    assert set(server) == {"generation", "embedding"}  # a server's load is not measured
    for kind in ("generation", "embedding"):
        fields = set(device[kind]) - {"target_facts"}
        assert fields == set(server[kind]) - {"target_facts"}
    remote = server["generation"]
    assert (remote["target"], remote["model"]) == (real_server.url, "smollm2:135m")
    assert (remote["prompt_tokens"], remote["completion_tokens"]) == (64, 4)
    for key in ("ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "total_tokens_per_s"):
        assert remote[key]["median"] > 0, key
    assert server["embedding"]["texts"] == 2 and server["embedding"]["texts_per_s"]["median"] > 0

    # a model the server does not list: its default one is measured, and the table says so
    table = CliRunner().invoke(
        main, ["bench", "--url", real_server.url, "--model", "tinyllama:latest", "--prompt",
               "64", "--gen", "4", "--reps", "1"], obj={HOST_KEY: host})
    assert table.exit_code == 0, table.output
    [row] = [line for line in table.stdout.splitlines() if line.startswith(real_server.url)]
    assert row.split()[1:8] == ["smollm2:135m", "-", "pp64", "tg4", "1", "64", "4"]
    assert (f"note: {real_server.url} does not list tinyllama:latest: its model "
            "smollm2:135m was measured") in table.stdout

"""The NPU's own variables: NPU_PROXY_MAX_PROMPT_LEN, NPU_PROXY_MIN_RESPONSE_LEN and
NPU_PROXY_NPU_GENERATE_HINT belong to this plugin, not to the core's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from npu_proxy.app import StartupError
from npu_proxy.engine.types import ModelInfo
from npu_proxy.settings import Settings, SettingsError, load_plugin_settings
from npu_proxy.testing import free_port, make_app
from npu_proxy_openvino_npu import NpuBackend, NpuSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("NPU_PROXY_"):
            monkeypatch.delenv(key)


def test_defaults_and_descriptions() -> None:
    limits = load_plugin_settings(NpuSettings)
    assert (limits.max_prompt_len, limits.min_response_len) == (4096, 128)
    assert limits.npu_generate_hint == "BEST_PERF"
    assert limits.npu_prefix_caching is False
    fields = NpuSettings.model_fields
    assert fields["max_prompt_len"].description == (
        "Prompt tokens the NPU is compiled for (MAX_PROMPT_LEN).")
    assert fields["min_response_len"].description == (
        "Response tokens the NPU is compiled for (MIN_RESPONSE_LEN).")
    assert not {"max_prompt_len", "min_response_len"} & set(Settings.model_fields)


def test_the_environment_reaches_the_compile_properties(
    monkeypatch: pytest.MonkeyPatch, ov_settings: Settings, smollm2: ModelInfo,
) -> None:
    monkeypatch.setenv("NPU_PROXY_MAX_PROMPT_LEN", "1024")
    monkeypatch.setenv("NPU_PROXY_MIN_RESPONSE_LEN", "256")
    monkeypatch.setenv("NPU_PROXY_NPU_GENERATE_HINT", "FAST_COMPILE")
    monkeypatch.setenv("NPU_PROXY_NPU_PREFIX_CACHING", "1")
    backend = NpuBackend(ov_settings)
    properties = backend.pipeline_properties(smollm2)
    assert properties["NPUW_LLM_ENABLE_PREFIX_CACHING"] == "YES"
    assert (properties["MAX_PROMPT_LEN"], properties["MIN_RESPONSE_LEN"]) == (1024, 256)
    assert properties["GENERATE_HINT"] == "FAST_COMPILE"
    assert backend.prompt_limit(smollm2) == 1024
    assert backend.context_limit(smollm2) == 1024 + 256


@pytest.mark.parametrize(
    ("variable", "value"),
    [("NPU_PROXY_MAX_PROMPT_LEN", "63"), ("NPU_PROXY_MAX_PROMPT_LEN", "long"),
     ("NPU_PROXY_MIN_RESPONSE_LEN", "0"), ("NPU_PROXY_NPU_GENERATE_HINT", "FASTEST"),
     ("NPU_PROXY_NPU_PREFIX_CACHING", "sometimes")],
)
def test_an_invalid_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_plugin_settings(NpuSettings)


def test_an_invalid_value_stops_the_app_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, ov_settings: Settings,
) -> None:
    monkeypatch.setenv("NPU_PROXY_MAX_PROMPT_LEN", "10")
    with pytest.raises(StartupError, match="NPU_PROXY_MAX_PROMPT_LEN"):
        make_app(ov_settings, plugins=["openvino-npu"])


@pytest.mark.parametrize("plugins", [["--plugins", "openvino,openvino-npu"], []])
def test_serve_refuses_an_invalid_npu_variable(plugins: list[str]) -> None:
    # Named or found by autoload, the plugin's invalid variable stops the server.
    env = {**os.environ, "NPU_PROXY_MIN_RESPONSE_LEN": "0", "NPU_PROXY_HOST": "127.0.0.1",
           "NPU_PROXY_PORT": str(free_port()), "NPU_PROXY_WARMUP": "0"}
    result = subprocess.run([sys.executable, "-m", "npu_proxy", *plugins, "serve"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "NPU_PROXY_MIN_RESPONSE_LEN" in result.stderr, result.stderr[-2000:]


def test_every_variable_is_documented_with_this_plugin_as_owner() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in docs.splitlines()
            if line.startswith("| `NPU_PROXY_")}
    for name in NpuSettings.model_fields:
        row = rows[f"`NPU_PROXY_{name.upper()}`"]
        assert row.split("|")[2].strip() == "openvino-npu", row

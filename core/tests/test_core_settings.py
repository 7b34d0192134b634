"""Settings: the original specification's variables, their defaults, and clear errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from npu_proxy.engine.routing import TokenThresholdSettings
from npu_proxy.settings import (
    MAX_DURATION,
    Settings,
    SettingsError,
    load_settings,
    parse_duration,
)


def test_defaults_follow_the_specification(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("NPU_PROXY_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.host, s.port, s.device, s.fallback_device) == ("0.0.0.0", 11435, "NPU", None)
    assert s.real_inference is True  # the deliberate change: real inference by default
    assert s.model_path == Path("~/.cache/npu-proxy/models").expanduser()
    assert s.inference_timeout == 180
    assert TokenThresholdSettings().token_limit == 1800  # the token_threshold policy's own
    assert (s.embedding_device, s.log_level) == ("CPU", "INFO")
    assert s.embedding_model == "all-minilm:latest"
    assert (s.max_queue, s.keep_alive) == (512, 300.0)


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_DEVICE", "gpu")
    monkeypatch.setenv("NPU_PROXY_FALLBACK_DEVICE", "auto")
    monkeypatch.setenv("NPU_PROXY_REAL_INFERENCE", "0")
    monkeypatch.setenv("NPU_PROXY_KEEP_ALIVE", "10m")
    monkeypatch.setenv("NPU_PROXY_PLUGINS", "ollama, mock")
    s = load_settings(port=9999, host=None)
    assert (s.device, s.fallback_device, s.real_inference) == ("GPU", None, False)
    assert (s.keep_alive, s.port, s.host, s.plugins) == (600.0, 9999, "0.0.0.0", ["ollama", "mock"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [("NPU_PROXY_PORT", "abc"), ("NPU_PROXY_PORT", "70000"), ("NPU_PROXY_MAX_QUEUE", "-1"),
     ("NPU_PROXY_KEEP_ALIVE", "soon"), ("NPU_PROXY_LOG_LEVEL", "LOUD"),
     ("NPU_PROXY_INFERENCE_TIMEOUT", "0")],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_serve_refuses_an_invalid_variable() -> None:
    env = {**os.environ, "NPU_PROXY_PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "npu_proxy", "serve"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "NPU_PROXY_PORT" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("300", 300.0), (1800, 1800.0), ("-1", -1.0),
     ("-1m", -60.0), ("2m30s", 150.0), ("250ms", 0.25), (0, 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m5", "5 minutes", True, None, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_variable_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name in [*Settings.model_fields, *TokenThresholdSettings.model_fields]:
        assert f"`NPU_PROXY_{name.upper()}`" in docs, name


def test_device_names_are_upper_case_but_a_remote_device_keeps_its_name() -> None:
    settings = Settings(device=" npu ", fallback_device="Upstream:Lab",
                        embedding_device="cpu")
    assert (settings.device, settings.fallback_device, settings.embedding_device) == (
        "NPU", "upstream:Lab", "CPU")
    assert Settings(device="upstream:lab").device == "upstream:lab"


@pytest.mark.parametrize("value", [math.inf, -math.inf, 10**400, -(10**400), "1" + "0" * 400,
                                   "99999999999999999999h", "-99999999999999999999h", 1e10])
def test_durations_beyond_the_longest_mean_forever(value: object) -> None:
    assert parse_duration(value) == -1.0


def test_the_longest_duration_is_kept_and_nan_is_refused() -> None:
    assert parse_duration(MAX_DURATION) == MAX_DURATION
    assert parse_duration("2540400h") == 2540400 * 3600.0  # 290 years: below the longest
    with pytest.raises(ValueError):
        parse_duration(math.nan)
    assert Settings(keep_alive=math.inf).keep_alive == -1.0

"""``npu-proxy doctor`` says, for each upstream, whether it answers and what it serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from npu_proxy.testing import LiveServer, test_settings
from npu_proxy_upstream.doctor import check_upstreams
from npu_proxy_upstream.testing import FakeEngine, upstream_table

SENTINEL = "sk-doctor-sentinel"


def test_each_upstream_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(models=("chat", "/models/file.gguf"), key=SENTINEL)
    with LiveServer(engine.app()) as live:
        url = live.url + "/v1"
        toml = (upstream_table("good", url, api_key_env="GOOD_KEY", models=["chat"])
                + upstream_table("unnamed", url, api_key_env="GOOD_KEY")
                + upstream_table("filtered", url, api_key_env="GOOD_KEY", models=["x*"])
                + upstream_table("badkey", url, api_key_env="BAD_KEY")
                + upstream_table("gone", "http://127.0.0.1:9/v1"))
        (tmp_path / "upstreams.toml").write_text(toml, "utf-8")
        monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(tmp_path / "upstreams.toml"))
        monkeypatch.setenv("GOOD_KEY", SENTINEL)
        monkeypatch.setenv("BAD_KEY", "sk-wrong")
        found = {c.message.split()[1]: c for c in check_upstreams(test_settings(tmp_path))}
    assert found["good"].status == "ok" and found["good"].message.endswith("1 model(s): chat")
    assert found["unnamed"].status == "warn" and "/models/file.gguf" in found["unnamed"].message
    assert "--alias" in found["unnamed"].fix
    assert found["filtered"].status == "warn" and "none passing its filter" in \
        found["filtered"].message
    assert found["badkey"].status == "fail" and "BAD_KEY" in found["badkey"].fix
    assert found["gone"].status == "fail" and "connection refused" in found["gone"].message
    assert all(SENTINEL not in repr(c) for c in found.values())


def test_the_doctor_command_shows_a_bad_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_PROXY_")}
    env.update(NPU_PROXY_UPSTREAMS="lab", NPU_PROXY_MODEL_PATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "npu_proxy", "--plugins", "upstream",
                           "doctor", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    checks = [c for c in json.loads(done.stdout)["checks"] if c["area"] == "upstreams"]
    assert checks and checks[0]["status"] == "fail"
    assert "NPU_PROXY_UPSTREAMS: 'lab' is not name=base-url" in checks[0]["message"]
    assert done.returncode == 1

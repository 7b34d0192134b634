"""Upstream configuration: validated at start with errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from npu_proxy.app import StartupError, create_app
from npu_proxy.testing import make_host, test_settings
from npu_proxy_upstream.settings import UpstreamSettings, load_upstreams


def settings_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pairs: str = "",
                  toml: str | None = None) -> UpstreamSettings:
    monkeypatch.setenv("NPU_PROXY_UPSTREAMS", pairs)
    if toml is not None:
        path = tmp_path / "upstreams.toml"
        path.write_text(toml, "utf-8")
        monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(path))
    return UpstreamSettings()


def test_nothing_configured_changes_nothing(tmp_path: Path) -> None:
    app = create_app(test_settings(tmp_path), make_host(["mock", "upstream"]))
    assert list(app.state.ctx.engine.backends) == ["MOCK"]


def test_pairs_and_file_together(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_KEY", "sk-lab")
    toml = """
[upstreams.ovms]
url = "http://10.0.0.6:8000/v3/"
api_key_env = "LAB_KEY"
models = ["qwen*"]
prefix = "ovms/"
max_parallel = 8
connect_timeout = 2
read_timeout = 60
"""
    configs = load_upstreams(settings_from(
        monkeypatch, tmp_path, "lab=http://10.0.0.5:8000/v1, pool=https://u:pw@pool.lan/v1",
        toml))
    assert [(c.name, c.device) for c in configs] == [
        ("lab", "upstream:lab"), ("pool", "upstream:pool"), ("ovms", "upstream:ovms")]
    ovms = configs[2]
    assert ovms.url == "http://10.0.0.6:8000/v3" and ovms.max_parallel == 8
    assert ovms.api_key is not None and ovms.api_key.get_secret_value() == "sk-lab"
    assert "sk-lab" not in repr(ovms)
    assert ovms.serves("qwen2.5-7b") and not ovms.serves("llama3")
    assert configs[1].shown_url == "https://pool.lan/v1"  # credentials never shown


@pytest.mark.parametrize(("pairs", "toml", "expected"), [
    ("lab", None, "NPU_PROXY_UPSTREAMS: 'lab' is not name=base-url"),
    ("lab=ftp://x", None, "is not an http(s) URL"),
    ("Lab Name=http://x", None, "use lower-case letters"),
    ("lab=http://a,lab=http://b", None, "upstream 'lab' is given twice"),
    ("", "[upstreams.lab]\nurl = 'http://x'\ntimeout = 3\n", "timeout: Extra inputs"),
    ("", "[upstreams.lab]\nurl = 'http://x'\napi_key_env = 'NO_SUCH_KEY_VAR'\n",
     "api_key_env names NO_SUCH_KEY_VAR, which is not set"),
    ("", "[upstreams.lab]\nurl = 'http://x'\napi_key = 'sk-inline'\n",
     "name it with api_key_env"),
    ("", "lab = 'http://x'\n", "unknown top-level keys ['lab']"),
    ("", "[upstreams.lab\n", "is not valid TOML"),
])
def test_bad_configuration_stops_startup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pairs: str, toml: str | None,
    expected: str,
) -> None:
    settings_from(monkeypatch, tmp_path, pairs, toml)
    with pytest.raises(StartupError, match="upstream") as info:
        create_app(test_settings(tmp_path), make_host(["upstream"]))
    assert expected in str(info.value)
    assert "sk-inline" not in str(info.value)


def test_a_missing_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NPU_PROXY_UPSTREAMS_FILE", str(tmp_path / "nowhere.toml"))
    with pytest.raises(StartupError, match="NPU_PROXY_UPSTREAMS_FILE: cannot read"):
        create_app(test_settings(tmp_path), make_host(["upstream"]))

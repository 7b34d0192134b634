"""Every variable of the plugin is in docs/configuration.md and docs/scale-out.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from npu_proxy_upstream.settings import UpstreamConfig, UpstreamSettings

DOCS = Path(__file__).resolve().parents[3] / "docs"


@pytest.mark.parametrize("page", ["configuration.md", "scale-out.md"])
def test_every_variable_is_documented(page: str) -> None:
    text = (DOCS / page).read_text("utf-8")
    for name in UpstreamSettings.model_fields:
        assert f"`NPU_PROXY_{name.upper()}`" in text, name


def test_every_file_key_is_documented() -> None:
    text = (DOCS / "scale-out.md").read_text("utf-8")
    for key in UpstreamConfig.model_fields.keys() - {"name", "api_key"}:
        assert f"| `{key}` |" in text, key

"""The model-format plugin in docs/plugins.md runs as printed: its module and its test."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def _example_blocks() -> list[str]:
    text = DOCS.read_text()
    section = text[text.index("## A model format plugin"):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else None]
    return re.findall(r"```python\n(.*?)```", section, re.S)


async def test_the_documented_model_format_plugin_works(tmp_path: Path) -> None:
    plugin_source, test_source = _example_blocks()
    # A real module, as the entry point would import it (pydantic resolves the
    # details' annotations through sys.modules).
    module = types.ModuleType("ngram_docs_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(plugin_source, str(DOCS), "exec"), module.__dict__)
        exec(compile(test_source, str(DOCS), "exec"), module.__dict__)
        test: Any = module.__dict__["test_pull_and_import"]
        await test(tmp_path)
        # The hook registers the format, as the host collects it.
        found: list[Any] = []
        module.__dict__["npu_proxy_register_model_formats"](found.append)
        assert [f.name for f in found] == ["ngram"]
    finally:
        del sys.modules[module.__name__]

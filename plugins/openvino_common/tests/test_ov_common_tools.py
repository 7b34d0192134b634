"""The tools capability from the chat template, and each family's call syntax parsed
back (Hermes/Qwen, Llama 3 JSON and Mistral), whole and streamed through the filter."""

from __future__ import annotations

import pytest
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy_openvino.chat import ToolCallFilter, parse_tool_calls
from npu_proxy_openvino.formats import template_renders_tools

KNOWN = {"get_weather", "get_time"}
WEATHER = ("get_weather", {"city": "Rome"})
TIME = ("get_time", {"zone": "CET"})

#: What each family writes when it calls get_weather then get_time.
FAMILY_OUTPUTS = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
              '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}'
              "\n</tool_call>",
    "llama3": '[{"name": "get_weather", "parameters": {"city": "Rome"}}, '
              '{"name": "get_time", "parameters": {"zone": "CET"}}]',
    "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}}, '
               '{"name": "get_time", "arguments": {"zone": "CET"}}]',
    "mistral-v11": '[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}'
                   '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}',
}


@pytest.mark.parametrize("family", FAMILY_OUTPUTS)
def test_each_family_syntax_is_parsed(family: str) -> None:
    text = FAMILY_OUTPUTS[family]
    rest, calls = parse_tool_calls(text, KNOWN)
    assert rest == ""
    assert [(c.name, c.arguments) for c in calls] == [WEATHER, TIME]
    # Streamed piece by piece, the filter shows none of it and yields the same calls.
    streamed = ToolCallFilter(KNOWN)
    shown = "".join(streamed.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    held, streamed_calls = streamed.finish()
    assert shown + held == ""
    assert [(c.name, c.arguments) for c in streamed_calls] == [WEATHER, TIME]


def test_a_mistral_call_to_an_unknown_function_stays_text() -> None:
    text = '[TOOL_CALLS]delete_all[ARGS]{"really": true}'
    assert parse_tool_calls(text, KNOWN) == (text, [])


def test_templates_that_render_tools() -> None:
    assert template_renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert template_renders_tools("{%- for tool in tools %}{{ tool.name }}{% endfor %}")
    assert template_renders_tools("{{- tools|tojson(indent=4) }}")
    # The word in a template's prose is not a tools section.
    assert not template_renders_tools("You can use tools. {% for m in messages %}{% endfor %}")


def test_the_default_model_has_no_tools_capability(smollm2: ModelInfo) -> None:
    assert not template_renders_tools(smollm2.template)
    assert not smollm2.can(Capability.TOOLS)

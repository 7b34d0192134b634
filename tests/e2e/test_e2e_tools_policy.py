"""One tools policy: the same model behaves the same through ``ollama.chat``,
``openai.chat.completions``, ``openai.responses`` and ``anthropic.messages``.

A model whose chat template renders tools (the mock's ``tools`` capability) gets the
tools and its calls come back parsed, the same call in every dialect; a model without
the capability is refused, with the same message naming model and capability, in
each dialect's own error shape. The real default model (SmolLM2, whose template has no
tools) is refused everywhere too."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.testing import LiveServer, inline_plugin, make_app, test_settings
from npu_proxy_mock.backend import mock_models

ASK = "What time is it in Oslo?"
WEATHER = ("get_weather", "Current weather in a city.",
           {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = ("get_time", "The local time in a time zone.",
        {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})
TOOLS = (WEATHER, TIME)


def _plain_model(register: Callable[[ModelInfo], None]) -> None:
    """A chat model whose template renders no tools (as SmolLM2's)."""
    chat = mock_models()[0]
    register(replace(chat, name="plain:latest", capabilities=frozenset({Capability.COMPLETION}),
                     template="{% for m in messages %}{{ m.content }}{% endfor %}"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("tools")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0.001")
        app = make_app(test_settings(tmp), ["mock", "ollama", "openai", "anthropic"],
                       {"plain": inline_plugin(npu_proxy_register_models=_plain_model)})
    with LiveServer(app) as live:
        yield live


DIALECTS = ("ollama", "openai", "responses", "anthropic")
Call = tuple[str, dict[str, Any]]


def ask(url: str, model: str, dialect: str) -> list[Call]:
    """The calls ``dialect``'s official client gets back for :data:`ASK` with :data:`TOOLS`."""
    messages = [{"role": "user", "content": ASK}]
    chat_tools = [{"type": "function", "function": {"name": n, "description": d, "parameters": p}}
                  for n, d, p in TOOLS]
    oai = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    if dialect == "ollama":
        reply = ollama.Client(host=url).chat(model=model, messages=messages, tools=chat_tools)
        return [(c.function.name, dict(c.function.arguments))
                for c in reply.message.tool_calls or ()]
    if dialect == "openai":
        completion = oai.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                 tools=chat_tools)  # type: ignore[arg-type]
        return [(c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
                for c in completion.choices[0].message.tool_calls or ()]
    if dialect == "responses":
        response = oai.responses.create(
            model=model, input=ASK,
            tools=[{"type": "function", "name": n, "description": d, "parameters": p,
                    "strict": False} for n, d, p in TOOLS],
        )
        return [(item.name, json.loads(item.arguments)) for item in response.output
                if item.type == "function_call"]
    message = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0).messages.create(
        model=model, max_tokens=64, messages=messages,  # type: ignore[arg-type]
        tools=[{"name": n, "description": d, "input_schema": p} for n, d, p in TOOLS],  # type: ignore[misc]
    )
    return [(block.name, dict(block.input)) for block in message.content  # type: ignore[arg-type]
            if block.type == "tool_use"]


def test_a_model_with_tools_calls_the_same_tool_in_every_dialect(server: LiveServer) -> None:
    found = {dialect: ask(server.url, "mock", dialect) for dialect in DIALECTS}
    # The mock calls the tool the question is about (the second one here).
    assert found == {dialect: [("get_time", {"zone": "mock"})] for dialect in DIALECTS}


def refusals(url: str, model: str) -> dict[str, tuple[int, str]]:
    """The status and message each dialect answers a tools request for ``model`` with."""
    seen: dict[str, tuple[int, str]] = {}
    for dialect in DIALECTS:
        try:
            ask(url, model, dialect)
        except ollama.ResponseError as exc:
            seen[dialect] = (exc.status_code, exc.error)
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            body: Any = exc.body
            error = body.get("error", body) if isinstance(body, dict) else {}
            seen[dialect] = (exc.status_code, error.get("message", ""))
    return seen


def test_a_model_without_tools_is_refused_alike_in_every_dialect(server: LiveServer) -> None:
    seen = refusals(server.url, "plain")
    assert seen == {d: (400, '"plain:latest" does not support tools') for d in DIALECTS}
    # Without tools (or with tool_choice none) the same model answers.
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    assert oai.responses.create(model="plain", input=ASK).output_text


def test_the_default_model_is_refused_alike_in_every_dialect(real_server: LiveServer) -> None:
    seen = refusals(real_server.url, "smollm2:135m")
    assert seen == {d: (400, '"smollm2:135m" does not support tools') for d in DIALECTS}


def test_generic_tools_opt_in_serves_them_alike(tmp_path: Path) -> None:
    """``NPU_PROXY_GENERIC_TOOLS=1``: a model without a tools template takes tools too,
    in every dialect alike."""
    app = make_app(test_settings(tmp_path, generic_tools=True), ["mock", "ollama", "openai",
                                                                  "anthropic"],
                   {"plain": inline_plugin(npu_proxy_register_models=_plain_model)})
    with LiveServer(app) as live:
        found = {dialect: ask(live.url, "plain", dialect) for dialect in DIALECTS}
    assert found == {dialect: [("get_time", {"zone": "mock"})] for dialect in DIALECTS}

"""The mock keeps the backend contract and is deterministic."""

from __future__ import annotations

import pytest
from npu_proxy.engine.types import (
    Done,
    GenerationRequest,
    Message,
    ModelInfo,
    ResponseFormat,
    SamplingOptions,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from npu_proxy.testing import BackendContract
from npu_proxy_mock.backend import MockBackend, count_tokens, mock_models


class TestMockContract(BackendContract):
    @pytest.fixture
    def backend(self) -> MockBackend:
        return MockBackend("NPU", token_delay=0.001, max_prompt_len=64)

    @pytest.fixture
    def model(self) -> ModelInfo:
        return mock_models()[0]


async def text_of(request: GenerationRequest) -> tuple[str, Done]:
    loaded = await MockBackend(token_delay=0).load(mock_models()[0])
    events = [e async for e in loaded.generate(request)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert isinstance(events[-1], Done)
    return text, events[-1]


def chat(text: str, **kw: object) -> GenerationRequest:
    options = kw.pop("options", SamplingOptions())
    return GenerationRequest(model="mock", messages=(Message("user", text),),
                             options=options, **kw)  # type: ignore[arg-type]


async def test_same_prompt_same_reply() -> None:
    one, _ = await text_of(chat("hello"))
    two, _ = await text_of(chat("hello"))
    other, _ = await text_of(chat("goodbye"))
    assert one == two and one != other


async def test_counts_are_honest() -> None:
    text, done = await text_of(chat("hello"))
    assert done.usage.completion_tokens == len(text.split())
    assert count_tokens("日本語のテキスト") == 8  # each CJK character is a token


async def test_stop_string_cuts_the_reply() -> None:
    full, _ = await text_of(chat("hello"))
    word = full.split()[3]
    cut, done = await text_of(chat("hello", options=SamplingOptions(stop=(word,))))
    assert word not in cut and full.startswith(cut) and done.finish_reason == "stop"
    assert done.stop_sequence == word


async def test_tools_and_json() -> None:
    tool = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]})
    loaded = await MockBackend(token_delay=0).load(mock_models()[0])
    events = [e async for e in loaded.generate(chat("weather?", tools=(tool,)))]
    call = events[0]
    assert isinstance(call, ToolCallDelta) and call.call.arguments == {"city": "mock"}
    text, _ = await text_of(chat("json", response_format=ResponseFormat("json_schema", {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})))
    assert text == '{"n": 42}'

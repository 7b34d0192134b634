"""Pure logic with no server: stop-sequence scanning, stop reasons, the model map."""

from __future__ import annotations

from pathlib import Path

import pytest
from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError
from npu_proxy.engine.store import ModelStore
from npu_proxy.engine.types import Done, FinishReason, TextDelta, ToolCall, ToolCallDelta, Usage
from npu_proxy_anthropic.encoder import MessageEncoder, StopSequenceScanner
from npu_proxy_anthropic.models import ModelResolver
from npu_proxy_anthropic.settings import AnthropicSettings, parse_model_map
from npu_proxy_mock.backend import mock_models
from pydantic import ValidationError


def scan(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, str | None]:
    scanner = StopSequenceScanner(stops)
    shown = "".join(scanner.feed(p) for p in pieces) + scanner.finish()
    return shown, scanner.matched


def test_scanner_finds_a_stop_split_across_pieces() -> None:
    assert scan(("END",), ["one E", "N", "D two"]) == ("one ", "END")


def test_scanner_picks_the_earliest_stop() -> None:
    assert scan(("b", "ab"), ["xab"]) == ("x", "ab")


def test_scanner_releases_held_back_text_at_the_end() -> None:
    assert scan(("END",), ["the E", "N"]) == ("the EN", None)


def test_scanner_without_stops_passes_everything() -> None:
    assert scan((), ["a", "b"]) == ("ab", None)


def usage(prompt: int = 5, completion: int = 3) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def test_encoder_reports_a_stop_sequence_a_backend_left_in_the_text() -> None:
    encoder = MessageEncoder("msg_1", "m", 5, ("###",))
    events = [e for piece in ["Hello", " wor", "ld##", "# tail"]
              for e in encoder.feed(TextDelta(piece))]
    events += encoder.feed(Done(FinishReason.STOP, usage()))
    message = encoder.message()
    assert message["content"] == [{"type": "text", "text": "Hello world"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "###")
    assert message["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0, "output_tokens": 3}
    assert "".join(e["delta"]["text"] for e in events
                   if e["type"] == "content_block_delta") == "Hello world"


def test_encoder_text_then_tool_use_blocks() -> None:
    encoder = MessageEncoder("msg_1", "m", 5)
    events = encoder.start() + encoder.feed(TextDelta("Let me look."))
    events += encoder.feed(ToolCallDelta(ToolCall("toolu_1", "ls", {"path": "."})))
    events += encoder.feed(Done(FinishReason.TOOL_CALLS, usage()))
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]
    assert events[5]["delta"] == {"type": "input_json_delta", "partial_json": '{"path": "."}'}
    assert encoder.message()["stop_reason"] == "tool_use"


def test_model_map_parsing() -> None:
    assert parse_model_map("claude-*haiku*=smollm2:135m, claude-*=Qwen2.5") == (
        ("claude-*haiku*", "smollm2:135m"), ("claude-*", "qwen2.5:latest"))
    assert parse_model_map("") == ()
    with pytest.raises(ValueError, match="pattern=model"):
        parse_model_map("claude-*")
    with pytest.raises(ValueError, match="invalid model name"):
        parse_model_map("claude-*=../x")


def test_invalid_settings_fail_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", "no-equals-sign")
    with pytest.raises(ValidationError, match="pattern=model"):
        AnthropicSettings()
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", "a=b")
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_PING_INTERVAL", "0")
    with pytest.raises(ValidationError, match="ping_interval"):
        AnthropicSettings()


def resolver(tmp_path: Path, rules: str = "", default: str = "mock") -> ModelResolver:
    store = ModelStore(tmp_path)
    for model in mock_models():
        store.register(model)
    return ModelResolver(store, parse_model_map(rules), default)


def test_resolver_order(tmp_path: Path) -> None:
    models = resolver(tmp_path, "claude-*haiku*=mock-embed, mock=mock-embed")
    assert models.resolve("Claude-Haiku-4-5") == "mock-embed:latest"  # first matching rule
    assert models.resolve("mock") == "mock-embed:latest"  # rules beat local names
    assert models.resolve("mock-embed") == "mock-embed:latest"  # a local name as itself
    assert models.resolve("claude-opus-4-6[1m]") == "mock:latest"  # Claude names: default
    with pytest.raises(ModelNotFoundError):
        models.resolve("gpt-4o")
    with pytest.raises(InvalidRequestError):
        models.resolve("../../secret")


def test_sampling_options_and_tool_choice_reach_the_engine_request() -> None:
    from npu_proxy.engine.types import ResponseFormat, SamplingOptions, ToolSpec
    from npu_proxy_anthropic.convert import generation_request
    from npu_proxy_anthropic.schemas import MessagesRequest, parse

    body = parse(MessagesRequest, {
        "model": "claude-x", "max_tokens": 100, "temperature": 0.5, "top_p": 0.8,
        "top_k": 20, "stop_sequences": ["\n\nHuman:"],
        "tools": [{"name": "ls", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}},
                          "effort": "high"},
        "messages": [{"role": "user", "content": "hi"}],
    })
    request = generation_request(body, "mock:latest")
    assert request.options == SamplingOptions(max_tokens=100, temperature=0.5, top_p=0.8,
                                              top_k=20, stop=("\n\nHuman:",))
    assert request.tools == (ToolSpec("ls", "", {"type": "object"}),)  # server tool dropped
    assert request.tool_choice == "required"
    assert request.response_format == ResponseFormat("json_schema", {"type": "object"})


def test_encoder_splits_the_prompt_into_new_and_cached_input_tokens() -> None:
    encoder = MessageEncoder("msg_1", "m", input_tokens=300)
    encoder.start()
    events = encoder.feed(Done(FinishReason.STOP, Usage(prompt_tokens=300, completion_tokens=4,
                                                        cached_tokens=256)))
    usage = {"input_tokens": 44, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 256, "output_tokens": 4}
    assert events[-2]["usage"] == usage and encoder.message()["usage"] == usage

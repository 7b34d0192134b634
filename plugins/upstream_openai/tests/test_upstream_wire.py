"""Reading an engine's stream: what it says of its cache and of a model's reasoning."""

from __future__ import annotations

from npu_proxy.engine.types import FinishReason, TextDelta, ThinkingDelta
from npu_proxy_upstream.wire import StreamReader


def test_the_engine_s_cached_tokens_and_reasoning_come_through() -> None:
    reader = StreamReader("lab")
    events = reader.feed({"choices": [{"index": 0, "delta": {"reasoning_content": "Hm, "}}]})
    events += reader.feed({"choices": [{"index": 0, "delta": {"content": "Four."},
                                        "finish_reason": "stop"}]})
    events += reader.feed({"choices": [], "usage": {
        "prompt_tokens": 300, "completion_tokens": 6, "total_tokens": 306,
        "prompt_tokens_details": {"cached_tokens": 256}}})
    assert events == [ThinkingDelta("Hm, "), TextDelta("Four.")]
    assert reader.finish == FinishReason.STOP
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.cached_tokens) == (300, 256)


def test_an_engine_that_reports_no_cache_reports_none() -> None:
    reader = StreamReader("lab")
    reader.feed({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2,
                                          "prompt_tokens_details": None}})
    assert reader.usage is not None and reader.usage.cached_tokens == 0

"""Engine events -> Anthropic's message and its stream events, by one state machine.

:class:`MessageEncoder` turns each engine event into the stream events Anthropic sends
(``content_block_start``/``_delta``/``_stop``, ``message_delta``, ``message_stop``) and
keeps the assembled message, so streaming and non-streaming replies cannot disagree.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
)

Event = dict[str, Any]


class StopSequenceScanner:
    """Finds which stop sequence ended the text, and keeps it out of the reply.

    Backends that stop on a string may or may not include it in their output. Text
    is passed through :meth:`feed`, which holds back any tail that could be the start
    of a stop sequence; once a sequence appears, the text before it is released and
    everything after is dropped. :attr:`matched` names the sequence.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.matched: str | None = None
        self._pending = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` that is safe to show now."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        buffer = self._pending + text
        hits = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if hits:
            position, self.matched = min(hits)
            self._pending = ""
            return buffer[:position]
        keep = self._held_back(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def finish(self) -> str:
        """Whatever was held back, now that no more text will come."""
        rest, self._pending = self._pending, ""
        return rest

    def _held_back(self, buffer: str) -> int:
        longest = min(len(buffer), max(len(s) for s in self.stops) - 1)
        for size in range(longest, 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0


def usage_body(prompt_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, int]:
    """Anthropic's ``usage``: ``input_tokens`` are the prompt tokens read anew, those
    served from the prefix cache are ``cache_read_input_tokens`` (the three input
    fields add up to the whole prompt). Nothing is written to a cache at a client's
    request (no ``cache_control`` breakpoints are kept), so
    ``cache_creation_input_tokens`` is 0."""
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached_tokens,
        "output_tokens": output_tokens,
    }


def stop_reason(done: Done, has_tool_use: bool, matched: str | None) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for the engine's finish."""
    if done.finish_reason == FinishReason.TOOL_CALLS or has_tool_use:
        return "tool_use", None
    if done.finish_reason == FinishReason.LENGTH:
        return "max_tokens", None
    # A backend that strips the stop string leaves no trace in the text; if the core
    # ever reports which string matched, that is the better source.
    reported = getattr(done, "stop_sequence", None)
    sequence = matched or (reported if isinstance(reported, str) else None)
    if sequence is not None:
        return "stop_sequence", sequence
    return "end_turn", None


class MessageEncoder:
    """Builds one assistant message from engine events.

    Call :meth:`start` once, :meth:`feed` for every engine event; each returns the
    stream events to send. :meth:`message` gives the assembled message at any time.
    """

    def __init__(
        self,
        message_id: str,
        model: str,
        input_tokens: int,
        stops: tuple[str, ...] = (),
        show_thinking: bool = True,
    ) -> None:
        self.id = message_id
        self.show_thinking = show_thinking
        self._open_thinking: int | None = None  # index of the thinking block still open
        self.model = model
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, int] = usage_body(input_tokens, 0, 0)
        self._scanner = StopSequenceScanner(stops)
        self._open_text: int | None = None  # index of the text block still open

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": dict(self.usage),
        }

    def start(self) -> list[Event]:
        started = {**self.message(), "content": []}
        return [{"type": "message_start", "message": started}]

    def feed(self, event: GenerationEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._close_thinking() + self._text(self._scanner.feed(event.text))
        if isinstance(event, ThinkingDelta):
            return self._thinking(event.text)
        if isinstance(event, ToolCallDelta):
            return self._tool_use(event)
        return self._done(event)

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        events: list[Event] = []
        if self._open_text is None:
            self._open_text = len(self.content)
            self.content.append({"type": "text", "text": ""})
            events.append({"type": "content_block_start", "index": self._open_text,
                           "content_block": {"type": "text", "text": ""}})
        self.content[self._open_text]["text"] += text
        events.append({"type": "content_block_delta", "index": self._open_text,
                       "delta": {"type": "text_delta", "text": text}})
        return events

    def _thinking(self, text: str) -> list[Event]:
        if not (text and self.show_thinking):
            return []
        events: list[Event] = []
        if self._open_thinking is None:
            events = self._close_text()
            self._open_thinking = len(self.content)
            self.content.append({"type": "thinking", "thinking": "", "signature": ""})
            events.append({"type": "content_block_start", "index": self._open_thinking,
                           "content_block": {"type": "thinking", "thinking": "",
                                             "signature": ""}})
        self.content[self._open_thinking]["thinking"] += text
        events.append({"type": "content_block_delta", "index": self._open_thinking,
                       "delta": {"type": "thinking_delta", "thinking": text}})
        return events

    def _close_thinking(self) -> list[Event]:
        """Ends the thinking block with its signature: a SHA-256 digest of the thinking
        (Anthropic's is encrypted; clients only pass it back, which is dropped)."""
        if self._open_thinking is None:
            return []
        index, self._open_thinking = self._open_thinking, None
        block = self.content[index]
        digest = hashlib.sha256(block["thinking"].encode()).digest()
        block["signature"] = base64.b64encode(digest).decode()
        return [{"type": "content_block_delta", "index": index,
                 "delta": {"type": "signature_delta", "signature": block["signature"]}},
                {"type": "content_block_stop", "index": index}]

    def _close_text(self) -> list[Event]:
        if self._open_text is None:
            return []
        index, self._open_text = self._open_text, None
        return [{"type": "content_block_stop", "index": index}]

    def _tool_use(self, event: ToolCallDelta) -> list[Event]:
        call = event.call
        events = self._close_thinking() + self._text(self._scanner.finish()) + self._close_text()
        index = len(self.content)
        self.content.append({"type": "tool_use", "id": call.id, "name": call.name,
                             "input": call.arguments})
        events += [
            {"type": "content_block_start", "index": index,
             "content_block": {"type": "tool_use", "id": call.id, "name": call.name,
                               "input": {}}},
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta",
                       "partial_json": json.dumps(call.arguments, ensure_ascii=False)}},
            {"type": "content_block_stop", "index": index},
        ]
        return events

    def _done(self, done: Done) -> list[Event]:
        events = self._close_thinking() + self._text(self._scanner.finish()) + self._close_text()
        has_tool_use = any(block["type"] == "tool_use" for block in self.content)
        self.stop_reason, self.stop_sequence = stop_reason(
            done, has_tool_use, self._scanner.matched
        )
        self.usage = usage_body(done.usage.prompt_tokens, done.usage.completion_tokens,
                                done.usage.cached_tokens)
        events += [
            {"type": "message_delta",
             "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
             "usage": dict(self.usage)},
            {"type": "message_stop"},
        ]
        return events

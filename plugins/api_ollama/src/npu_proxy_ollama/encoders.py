"""Engine events -> Ollama response objects, for /api/generate and /api/chat.

An encoder turns each event of a generation into the chunks Ollama streams (one NDJSON
line each, through the core's :func:`~npu_proxy.streaming.stream_response`), and a
whole generation into the one object ``stream: false`` returns. Each tool call is
sent whole, in its own chunk, with its arguments as a JSON object. A failure after the
first line ends the stream with one ``{"error": ...}`` line.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

from npu_proxy.engine.errors import EngineError
from npu_proxy.engine.types import (
    Done,
    GenerationEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
)
from npu_proxy.streaming import NDJSON, Collected, StreamEncoder

from .wire import done_reason, line, now_rfc3339, statistics


class Encoder(StreamEncoder[GenerationEvent]):
    """Shared by both endpoints; subclasses say where the text goes.

    Reasoning goes in ``thinking`` (Ollama's field); with ``show_thinking=False``
    (the request said ``think: false``) it is left out.
    """

    media_type = NDJSON

    def __init__(self, model: str, *, show_thinking: bool = True) -> None:
        self.model = model
        self.show_thinking = show_thinking
        self._calls = 0
        self._ended = False

    def encode(self, event: GenerationEvent) -> Iterable[bytes]:
        self._ended = isinstance(event, Done)
        if isinstance(event, ThinkingDelta) and not (self.show_thinking and event.text):
            return ()
        payload = self.chunk(event)
        return () if payload is None else (line(payload),)

    def thinking_of(self, reply: Collected) -> dict[str, str]:
        """The ``thinking`` field of a whole reply, if it has (and may show) any."""
        return {"thinking": reply.thinking} if self.show_thinking and reply.thinking else {}

    def closing(self) -> Iterable[bytes]:
        if self._ended:
            return ()
        return (line({"error": "the generation ended without a result"}),)

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return (line({"error": error.message}),)

    def _head(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": now_rfc3339()}

    def _final(self, done: Done) -> dict[str, Any]:
        final = {
            "done": True,
            "done_reason": done_reason(done.finish_reason),
            **statistics(done.usage),
        }
        if done.logprobs:
            # Ollama's shape; the whole answer's tokens, with the last chunk when streamed.
            final["logprobs"] = [
                {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode())}
                for e in done.logprobs
            ]
        return final

    def call_json(self, call: ToolCall) -> dict[str, Any]:
        """A tool call as Ollama writes it; ``index`` counts the calls of this turn."""
        index, self._calls = self._calls, self._calls + 1
        return {
            "id": call.id,
            "function": {"index": index, "name": call.name, "arguments": call.arguments},
        }

    @abc.abstractmethod
    def chunk(self, event: GenerationEvent) -> dict[str, Any] | None:
        """The streamed object for ``event`` (``None``: nothing to send)."""

    @abc.abstractmethod
    def whole(self, reply: Collected) -> dict[str, Any]:
        """The single object of a non-streamed response."""


class GenerateEncoder(Encoder):
    """``/api/generate``: text in ``response``; ``context`` (token ids) in the final
    object when it was set before that object is encoded."""

    def __init__(self, model: str, *, show_thinking: bool = True) -> None:
        super().__init__(model, show_thinking=show_thinking)
        self.context: list[int] | None = None

    def chunk(self, event: GenerationEvent) -> dict[str, Any] | None:
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            return {**self._head(), "response": event.text, "done": False}
        if isinstance(event, ThinkingDelta):
            return {**self._head(), "response": "", "thinking": event.text, "done": False}
        if isinstance(event, Done):
            return {**self._head(), "response": "", **self._final(event), **self._context()}
        return None  # /api/generate takes no tools, so no call can arrive

    def whole(self, reply: Collected) -> dict[str, Any]:
        return {**self._head(), "response": reply.text, **self.thinking_of(reply),
                **self._final(reply.done), **self._context()}

    def _context(self) -> dict[str, list[int]]:
        return {} if self.context is None else {"context": self.context}


class ChatEncoder(Encoder):
    """``/api/chat``: text and tool calls in an assistant ``message``."""

    def _message(self, content: str, calls: list[ToolCall] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [self.call_json(c) for c in calls]
        return message

    def chunk(self, event: GenerationEvent) -> dict[str, Any] | None:
        if isinstance(event, TextDelta):
            if not event.text:
                return None
            return {**self._head(), "message": self._message(event.text), "done": False}
        if isinstance(event, ThinkingDelta):
            message = {**self._message(""), "thinking": event.text}
            return {**self._head(), "message": message, "done": False}
        if isinstance(event, ToolCallDelta):
            return {**self._head(), "message": self._message("", [event.call]), "done": False}
        return {**self._head(), "message": self._message(""), **self._final(event)}

    def whole(self, reply: Collected) -> dict[str, Any]:
        message = {**self._message(reply.text, list(reply.calls)), **self.thinking_of(reply)}
        return {**self._head(), "message": message, **self._final(reply.done)}

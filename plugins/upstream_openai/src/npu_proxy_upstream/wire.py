"""The engine's requests as OpenAI request bodies, and OpenAI stream chunks as engine events.

Only the standard OpenAI chat-completions, completions and embeddings shapes are
written and read, so any OpenAI-compatible engine understands them. Options the engine
left unset (``None``) are not sent: the remote engine applies its model's defaults.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from npu_proxy.engine.errors import BackendError
from npu_proxy.engine.types import (
    FinishReason,
    GenerationRequest,
    Message,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))


def _image_url(data: bytes) -> dict[str, Any]:
    kind = next((mime for magic, mime in _IMAGE_TYPES if data.startswith(magic)), None)
    if kind is None:
        kind = "image/webp" if data[8:12] == b"WEBP" else "application/octet-stream"
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{encoded}"}}


def message_body(message: Message) -> dict[str, Any]:
    """One chat message in OpenAI's shape (images as data-URL content parts)."""
    body: dict[str, Any] = {"role": message.role}
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        body["content"] = parts + [_image_url(image) for image in message.images]
    else:
        body["content"] = message.content
    if message.tool_calls:
        body["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for call in message.tool_calls
        ]
    if message.role == "tool":
        if message.tool_call_id:
            body["tool_call_id"] = message.tool_call_id
        if message.tool_name:
            body["name"] = message.tool_name
    return body


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def generation_body(request: GenerationRequest, model_id: str) -> tuple[str, dict[str, Any]]:
    """The endpoint (``/chat/completions`` or ``/completions``) and body for ``request``.

    Always streamed, with usage asked for in the last chunk. Chat requests carry the
    messages, tools, tool choice and response format; a raw prompt goes to
    ``/completions`` with its suffix. ``top_k``, ``min_p`` and ``repetition_penalty``
    are not OpenAI's but vLLM and llama.cpp read them; they are sent only when set.
    """
    body: dict[str, Any] = {
        "model": model_id,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    options = request.options
    for name in ("max_tokens", "temperature", "top_p", "seed", "presence_penalty",
                 "frequency_penalty", "top_k", "min_p", "repetition_penalty"):
        value = getattr(options, name)
        if value is not None:
            body[name] = value
    if options.stop:
        body["stop"] = list(options.stop)
    if request.messages is None:
        body["prompt"] = request.prompt
        if request.suffix:
            body["suffix"] = request.suffix
        return "/completions", body
    body["messages"] = [message_body(m) for m in request.messages]
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {
                "name": t.name, "description": t.description,
                "parameters": t.parameters or {"type": "object", "properties": {}}}}
            for t in request.tools
        ]
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.response_format is not None:
        if request.response_format.kind == "json":
            body["response_format"] = {"type": "json_object"}
        else:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.response_format.schema
                                or {"type": "object"}},
            }
    return "/chat/completions", body


_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.STOP,
}


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamReader:
    """Turns the chunks of one OpenAI stream into engine events.

    Text comes out as it arrives; tool calls arrive in pieces (id and name first, the
    arguments' JSON in fragments) and come out whole, once the stream says how it
    finished. ``finish`` and ``usage`` hold what the last chunks said.
    """

    upstream: str
    finish: FinishReason | None = None
    usage: Usage | None = None
    _calls: dict[int, _PartialCall] = field(default_factory=dict)

    def feed(self, chunk: dict[str, Any]) -> list[TextDelta | ThinkingDelta | ToolCallDelta]:
        """The events in ``chunk`` (a decoded ``data:`` payload)."""
        events: list[TextDelta | ThinkingDelta | ToolCallDelta] = []
        if isinstance(chunk.get("error"), dict | str):
            error = chunk["error"]
            message = error.get("message", "") if isinstance(error, dict) else error
            raise BackendError(f"upstream {self.upstream} failed: {message or 'no reason'}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                # what the engine read from its own prefix cache, as it reports it
                cached_tokens=int(cached or 0),
            )
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            # vLLM, DeepSeek and llama.cpp send a reasoning model's thinking apart
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str) and thinking:
                events.append(ThinkingDelta(thinking))
            if text:
                events.append(TextDelta(text))
            for piece in delta.get("tool_calls") or ():
                partial = self._calls.setdefault(int(piece.get("index", 0)), _PartialCall())
                partial.id = piece.get("id") or partial.id
                function = piece.get("function") or {}
                partial.name = function.get("name") or partial.name
                if function.get("arguments"):
                    partial.arguments.append(function["arguments"])
            reason = choice.get("finish_reason")
            if reason:
                self.finish = _FINISH.get(reason, FinishReason.STOP)
                events += self._complete_calls()
        return events

    def _complete_calls(self) -> list[TextDelta | ThinkingDelta | ToolCallDelta]:
        events: list[TextDelta | ThinkingDelta | ToolCallDelta] = []
        for index in sorted(self._calls):
            partial = self._calls[index]
            text = "".join(partial.arguments).strip() or "{}"
            try:
                arguments = json.loads(text)
            except json.JSONDecodeError:
                raise BackendError(
                    f"upstream {self.upstream} sent tool-call arguments that are not JSON"
                ) from None
            if not isinstance(arguments, dict):
                raise BackendError(
                    f"upstream {self.upstream} sent tool-call arguments that are not an object")
            events.append(ToolCallDelta(ToolCall(partial.id or f"call_{index}", partial.name,
                                                 arguments)))
        self._calls.clear()
        return events

    def end(self) -> list[TextDelta | ThinkingDelta | ToolCallDelta]:
        """Tool calls still pending when the stream ended without a finish reason."""
        return self._complete_calls()

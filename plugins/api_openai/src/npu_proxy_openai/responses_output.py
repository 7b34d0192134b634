"""A generation's events -> a Responses API ``response`` object and the typed stream
events that build it.

One :class:`ResponseBuilder` serves both ways of answering: a streamed reply sends
every event it returns (each with its ``sequence_number``), a whole one feeds it the
collected events and sends :attr:`ResponseBuilder.response`. So the streamed and the
whole reply are the same object by construction. Text becomes a ``message`` item with
one ``output_text`` part; each tool call a ``function_call`` item; reasoning a
``reasoning`` item with one ``reasoning_text`` part (streamed as
``response.reasoning_text.delta``).
"""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

from npu_proxy.engine.errors import EngineError
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    Message,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

from .errors import error_body
from .logprobs import chat_logprobs
from .responses_schema import ResponsesRequest

Event = dict[str, Any]


def new_item_id(prefix: str) -> str:
    """An id in OpenAI's style for responses and items: ``resp_<hex>``, ``msg_<hex>``."""
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_body(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    """The Responses API ``usage`` object, from the generation's own counts."""
    body: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        # prompt tokens read from the prefix cache, as the backend vouches for them
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    body.update(
        output_tokens=usage.completion_tokens,
        output_tokens_details={"reasoning_tokens": reasoning_tokens},
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )
    return body


def response_head(
    body: ResponsesRequest, response_id: str, created_at: int, store: bool
) -> dict[str, Any]:
    """The response object before any output: the request's settings, echoed."""
    fmt = body.text.format if body.text and body.text.format else None
    tool_choice: Any = body.tool_choice or "auto"
    if not isinstance(tool_choice, str):
        tool_choice = tool_choice.model_dump(exclude_none=True)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": dict(body.metadata or {}),
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {
            "effort": body.reasoning.effort if body.reasoning else None,
            "summary": body.reasoning.summary if body.reasoning else None,
        },
        "store": store,
        "temperature": body.temperature,
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
        "tool_choice": tool_choice,
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": None,
    }


class ResponseBuilder:
    """Builds one response from its generation's events.

    Each method returns the stream events its input produced, numbered, each a snapshot
    (later events do not change it).
    ``parallel_tool_calls=False`` keeps the first tool call of a turn and drops the rest.
    ``namespaces`` maps function names to the namespace tool they came in (a call to
    one names its namespace). ``show_thinking=False`` (reasoning effort ``none``) leaves
    reasoning out.
    """

    def __init__(
        self,
        head: dict[str, Any],
        namespaces: dict[str, str] | None = None,
        show_thinking: bool = True,
    ) -> None:
        self.response = head
        self._namespaces = namespaces or {}
        self._show_thinking = show_thinking
        self._reasoning: dict[str, Any] | None = None  # the reasoning item being written
        self._sequence = 0
        self._parallel = bool(head["parallel_tool_calls"])
        self._message: dict[str, Any] | None = None  # the message item being written
        self._text: list[str] = []
        self._calls: list[ToolCall] = []

    @property
    def output(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.response["output"]
        return items

    def reply(self) -> Message:
        """The output as an assistant turn, for a conversation to continue with."""
        return Message(role="assistant", content="".join(self._text), tool_calls=tuple(self._calls))

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def feed(self, event: GenerationEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._text_delta(event.text)
        if isinstance(event, ThinkingDelta):
            return self._thinking_delta(event.text)
        if isinstance(event, ToolCallDelta):
            return self._call(event.call)
        return self._finish(event)

    def fail(self, error: EngineError) -> list[Event]:
        """The ``error`` event, then ``response.failed`` with the items made so far."""
        detail = error_body(error)["error"]
        self.response["status"] = "failed"
        self.response["error"] = {
            "code": "server_error" if error.status >= 500 else "invalid_prompt",
            "message": error.message,
        }
        return [
            self._event("error", code=detail["code"], message=error.message,
                        param=detail["param"]),
            self._event("response.failed", response=self.response),
        ]

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **copy.deepcopy(fields)}
        self._sequence += 1
        return event

    def _thinking_delta(self, text: str) -> list[Event]:
        if not (text and self._show_thinking):
            return []
        events = self._close_message() if self._message is not None else []
        if self._reasoning is None:
            self._reasoning = {"id": new_item_id("rs"), "type": "reasoning", "summary": [],
                               "content": [], "status": "in_progress"}
            self.output.append(self._reasoning)
            events.append(self._item_event("response.output_item.added", self._reasoning))
            self._reasoning["content"].append({"type": "reasoning_text", "text": ""})
        self._reasoning["content"][0]["text"] += text
        events.append(self._reasoning_event("response.reasoning_text.delta", delta=text))
        return events

    def _close_reasoning(self) -> list[Event]:
        item = self._reasoning
        if item is None:
            return []
        events = [self._reasoning_event("response.reasoning_text.done",
                                        text=item["content"][0]["text"])]
        self._reasoning = None
        item["status"] = "completed"
        events.append(self._item_event("response.output_item.done", item))
        return events

    def _reasoning_event(self, kind: str, **fields: Any) -> Event:
        assert self._reasoning is not None
        index = next(i for i, known in enumerate(self.output) if known is self._reasoning)
        return self._event(kind, item_id=self._reasoning["id"], output_index=index,
                           content_index=0, **fields)

    def _text_delta(self, text: str) -> list[Event]:
        if not text:
            return []
        events = self._close_reasoning()
        if self._message is None:
            self._message = {"id": new_item_id("msg"), "type": "message",
                             "status": "in_progress", "role": "assistant", "content": []}
            self.output.append(self._message)
            events.append(self._item_event("response.output_item.added", self._message))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self._part_event("response.content_part.added", part))
            self._message["content"].append(part)
        part = self._message["content"][0]
        part["text"] += text
        self._text.append(text)
        events.append(self._part_event("response.output_text.delta", None, delta=text,
                                       logprobs=[]))
        return events

    def _close_message(self) -> list[Event]:
        message = self._message
        if message is None:
            return self._close_reasoning()
        part = message["content"][0]
        events = [
            self._part_event("response.output_text.done", None, text=part["text"],
                             logprobs=part["logprobs"]),
            self._part_event("response.content_part.done", part),
        ]
        self._message = None
        message["status"] = "completed"
        events.append(self._item_event("response.output_item.done", message))
        return events

    def _call(self, call: ToolCall) -> list[Event]:
        events = self._close_message()
        if self._calls and not self._parallel:
            return events
        self._calls.append(call)
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        item = {"id": new_item_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": call.id, "name": call.name, "arguments": ""}
        if call.name in self._namespaces:
            item["namespace"] = self._namespaces[call.name]
        self.output.append(item)
        index = len(self.output) - 1
        events.append(self._item_event("response.output_item.added", item))
        events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                  output_index=index, delta=arguments))
        item.update(arguments=arguments, status="completed")
        events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=index, name=call.name, arguments=arguments))
        events.append(self._item_event("response.output_item.done", item))
        return events

    def _finish(self, done: Done) -> list[Event]:
        if done.logprobs and self._message is not None and not (
                done.reasoning_tokens or self._calls):
            # The values arrive with the end of the generation; every token was text.
            self._message["content"][0]["logprobs"] = chat_logprobs(done.logprobs)["content"]
        events = self._close_message()
        incomplete = done.finish_reason == FinishReason.LENGTH and not self._calls
        self.response["status"] = "incomplete" if incomplete else "completed"
        if incomplete:
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
        self.response["usage"] = usage_body(done.usage, done.reasoning_tokens)
        kind = "response.incomplete" if incomplete else "response.completed"
        events.append(self._event(kind, response=self.response))
        return events

    def _item_event(self, kind: str, item: dict[str, Any]) -> Event:
        index = next(i for i, known in enumerate(self.output) if known is item)
        return self._event(kind, output_index=index, item=item)

    def _part_event(self, kind: str, part: dict[str, Any] | None, **fields: Any) -> Event:
        assert self._message is not None
        index = next(i for i, known in enumerate(self.output) if known is self._message)
        where = {"item_id": self._message["id"], "output_index": index, "content_index": 0}
        if part is not None:
            where["part"] = part
        return self._event(kind, **where, **fields)

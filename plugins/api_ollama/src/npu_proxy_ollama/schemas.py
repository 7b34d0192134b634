"""Request bodies of /api/generate and /api/chat, type-checked strictly.

Strict mode makes ``stream: "yes"`` or ``prompt: 42`` a 400 instead of a silent
coercion. Fields whose Ollama semantics need more than a type (``options``, ``format``,
``keep_alive``, ``images``) are ``Any`` here and parsed in :mod:`.options`. Unknown
fields are ignored, as Ollama ignores them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from npu_proxy.engine.errors import InvalidRequestError
from pydantic import BaseModel, ConfigDict, Field


class StrictBody(BaseModel):
    """Type-strict, extra fields ignored: the base of every request body."""

    model_config = ConfigDict(strict=True, extra="ignore")


class CommonBody(StrictBody):
    model: str | None = None
    name: str | None = None
    stream: bool | None = None
    options: Any = None
    format: Any = None
    keep_alive: Any = None
    think: bool | Literal["high", "medium", "low"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class GenerateBody(CommonBody):
    """``POST /api/generate``. ``template`` is accepted and ignored (see the README)."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool | None = None
    images: Any = None
    context: list[int] | None = None
    #: keep the end of a prompt longer than the context (default) or refuse (False)
    truncate: bool | None = None


class FunctionCall(StrictBody):
    name: str = Field(min_length=1)
    arguments: Any = None
    index: int | None = None

    def argument_object(self) -> dict[str, Any]:
        """Arguments as a JSON object; a JSON string is decoded (some clients send one)."""
        value = self.arguments
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise InvalidRequestError(
                    f"tool call {self.name!r} has arguments that are not JSON",
                    param="messages.tool_calls",
                ) from None
        if not isinstance(value, dict):
            raise InvalidRequestError(
                f"tool call {self.name!r} arguments must be a JSON object",
                param="messages.tool_calls",
            )
        return value


class ToolCallIn(StrictBody):
    id: str | None = None
    function: FunctionCall


class ChatMessage(StrictBody):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: Any = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None


class ToolFunction(StrictBody):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(StrictBody):
    type: Literal["function"] = "function"
    function: ToolFunction


class ChatBody(CommonBody):
    """``POST /api/chat``."""

    messages: list[ChatMessage] | None = None
    tools: list[ToolDefinition] | None = None
    #: drop the oldest messages to fit the context (default) or refuse (False)
    truncate: bool | None = None

"""The request body of ``POST /v1/responses``, as the ``openai`` SDK's
``response_create_params`` define it.

Like the other bodies (:mod:`.schemas`) it is strict about types and accepts fields it
does not know, so cloud-only parameters (``include``, ``prompt_cache_key``,
``service_tier``, ``user``, ...) are accepted and ignored. Input items and tools are
read loosely here (one model per kind of thing, ``type`` as a plain string) so that an
unsupported item or tool type is refused by name in :mod:`.responses_input` instead
of with a union's validation noise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .schemas import UINT32_MAX, Body


class InputPart(Body):
    """One content part of an input message or of a tool's output:
    ``input_text``/``output_text`` (``text``), ``input_image`` (``image_url``),
    ``refusal`` (``refusal``); other types are refused by name."""

    type: str
    text: str | None = None
    image_url: str | None = None
    refusal: str | None = None


class InputItem(Body):
    """One input item. ``type`` is ``message`` (also when omitted and ``role`` is set),
    ``function_call``, ``function_call_output`` or ``reasoning``."""

    type: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None


class ResponsesTool(Body):
    """A tool as the Responses API writes it: flat, ``{"type": "function", "name", ...}``,
    or a ``namespace`` that groups function tools under its ``name``."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[ResponsesTool] | None = None


class ToolChoiceObject(Body):
    """``{"type": "function", "name": ...}``; other types are refused by name."""

    type: str
    name: str | None = None


class TextFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(Body):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(Body):
    """``POST /v1/responses``."""

    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning: ReasoningParam | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool = False
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    conversation: Any = None
    prompt: Any = None

"""The Messages API request body as Anthropic documents it, validated strictly.

Strict mode mirrors the real API: ``"stream": "yes"`` or ``"max_tokens": "10"`` are
errors, not coerced. Fields the server cannot act on (``metadata``, ``thinking``,
``cache_control``, ``service_tier``, ...) are accepted and ignored, because clients such
as Claude Code send them on every request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UINT32_MAX = 2**32 - 1


class Wire(BaseModel):
    """Base for request parts: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TextBlock(Wire):
    type: Literal["text"]
    text: str


class ImageSource(Wire):
    type: Literal["base64", "url", "file"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Wire):
    type: Literal["image"]
    source: ImageSource


class DocumentBlock(Wire):
    """Accepted so the error can say clearly that documents are not supported."""

    type: Literal["document"]


class ToolUseBlock(Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultPart = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultPart] | None = None
    is_error: bool = False


class ThinkingBlock(Wire):
    """Earlier reasoning the client echoes back; it carries nothing a local model needs."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(Wire):
    # A "system" turn is not in the spec, but some clients put one in the list.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(Wire):
    """A client tool (``input_schema``) or a server tool (``type`` such as web_search_...)."""

    name: str = Field(min_length=1)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(Wire):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(Wire):
    """Structured output; ``effort`` has no local meaning and is ignored."""

    format: OutputFormat | None = None


class PromptParams(Wire):
    """What ``/v1/messages/count_tokens`` needs: everything that shapes the prompt."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(PromptParams):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1, le=UINT32_MAX)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=UINT32_MAX)

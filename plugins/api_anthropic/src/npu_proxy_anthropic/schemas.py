"""The Messages API request body as Anthropic documents it, validated strictly.

Strict mode mirrors the real API: ``"stream": "yes"`` or ``"max_tokens": "10"`` are
errors, not coerced. Fields the server cannot act on (``metadata``,
``cache_control``, ``service_tier``, ...) are accepted and ignored, because clients such
as Claude Code send them on every request.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from npu_proxy.engine.errors import InvalidRequestError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

UINT32_MAX = 2**32 - 1
W = TypeVar("W", bound=BaseModel)
# Location parts pydantic adds for union branches ("str", "list[...]", "TextBlock").
_BRANCH = re.compile(r"^(str|int|float|bool|[A-Z]\w*)$|\[")


def parse(model: type[W], data: Any) -> W:
    """``model`` from a decoded JSON body; :class:`InvalidRequestError` naming the field.

    For a value that matches no branch of a union (content as string or blocks), the
    deepest error is the one that explains the mistake, so that one is reported.
    """
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
        where = ".".join(_readable(first.get("loc", ())))
        if first.get("type") == "missing":
            raise InvalidRequestError(f"{where} is required", param=where) from None
        message = first.get("msg", "invalid value")
        text = f"invalid value for {where}: {message}" if where else message
        raise InvalidRequestError(text, param=where or None) from None


_BLOCK_TAGS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)


def _readable(loc: tuple[int | str, ...]) -> list[str]:
    """The location as a client wrote it: no union branches, no block tags."""
    kept = [p for p in loc if not _BRANCH.search(str(p))]
    parts = []
    for i, part in enumerate(kept):
        # A discriminated union repeats the block's tag after its index ("0.text.text").
        tag = i > 0 and isinstance(kept[i - 1], int) and i + 1 < len(kept)
        if not (tag and part in _BLOCK_TAGS):
            parts.append(str(part))
    return parts


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


class ThinkingConfig(Wire):
    """Extended thinking: ``enabled`` (with ``budget_tokens``, the cap on reasoning
    tokens), ``adaptive`` (the model decides) or ``disabled``."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1, le=UINT32_MAX)


class PromptParams(Wire):
    """What ``/v1/messages/count_tokens`` needs: everything that shapes the prompt."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(PromptParams):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1, le=UINT32_MAX)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=UINT32_MAX)

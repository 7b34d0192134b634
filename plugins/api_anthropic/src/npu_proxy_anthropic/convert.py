"""Anthropic request bodies -> the engine's :class:`GenerationRequest`.

The mapping, turn by turn:

- ``system`` (string or text blocks) and any ``system`` turn -> a system message;
- user text -> a user message; each ``tool_result`` -> a tool message (in order, so
  text after the results follows them); images -> message images (a text-only model
  then refuses the request with a clear 400);
- assistant text -> content, ``tool_use`` -> tool calls; ``thinking`` is dropped;
- ``thinking`` (enabled or adaptive) -> the engine's ``think`` with ``budget_tokens``
  as the cap on reasoning tokens; without it a reasoning model is asked not to think.
"""

from __future__ import annotations

import base64
import binascii

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import (
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingOptions,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

from .schemas import (
    DocumentBlock,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    PromptParams,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from .schemas import ToolChoice as WireToolChoice


def generation_request(body: PromptParams, model: str) -> GenerationRequest:
    """The engine request for ``body`` served by local ``model``.

    ``body`` may be a :class:`MessagesRequest` (sampling options apply) or the bare
    prompt of a token count. Raises :class:`InvalidRequestError` for contradictions
    the schema cannot see (a forced tool that does not exist, bad image data).
    """
    tools = convert_tools(body)
    options = SamplingOptions()
    if isinstance(body, MessagesRequest):
        stops = tuple(body.stop_sequences or ())
        if any(not s for s in stops):
            raise InvalidRequestError("stop_sequences must not contain empty strings",
                                      param="stop_sequences")
        options = SamplingOptions(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=stops,
        )
    return GenerationRequest(
        model=model,
        messages=convert_messages(body),
        tools=tools,
        tool_choice=convert_tool_choice(body.tool_choice, tools),
        options=options,
        response_format=response_format(body),
        # Anthropic's models think only when asked to: so does a local reasoning model.
        think=body.thinking is not None and body.thinking.type != "disabled",
        thinking_budget=body.thinking.budget_tokens if body.thinking else None,
    )


def response_format(body: PromptParams) -> ResponseFormat | None:
    """``output_config.format`` (JSON schema outputs) as the engine's constrained decoding."""
    config = body.output_config
    if config is None or config.format is None:
        return None
    return ResponseFormat(kind="json_schema", schema=config.format.json_schema)


def convert_tools(body: PromptParams) -> tuple[ToolSpec, ...]:
    """Client tools as ToolSpecs. Server tools (web search, ...) cannot run here: skipped."""
    specs = []
    for index, tool in enumerate(body.tools or ()):
        if tool.type not in (None, "custom"):
            continue
        if tool.input_schema is None:
            raise InvalidRequestError(
                f"tools.{index}.input_schema is required", param=f"tools.{index}.input_schema"
            )
        specs.append(ToolSpec(tool.name, tool.description or "", tool.input_schema))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool names must be unique", param="tools")
    return tuple(specs)


def convert_tool_choice(choice: WireToolChoice | None, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    if choice is None or choice.type == "auto":
        return "auto"
    if choice.type == "none":
        return "none"
    if not tools:
        raise InvalidRequestError(
            f"tool_choice.type '{choice.type}' needs at least one tool", param="tool_choice"
        )
    if choice.type == "any":
        return "required"
    if not choice.name:
        raise InvalidRequestError("tool_choice.name is required when type is 'tool'",
                                  param="tool_choice.name")
    if choice.name not in {t.name for t in tools}:
        raise InvalidRequestError(f"tool_choice names '{choice.name}', which is not in tools",
                                  param="tool_choice.name")
    return choice.name


def system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n\n".join(block.text for block in system)


def convert_messages(body: PromptParams) -> tuple[Message, ...]:
    messages: list[Message] = []
    system = system_text(body.system)
    if system:
        messages.append(Message(role="system", content=system))
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool messages
    for index, turn in enumerate(body.messages):
        if turn.role == "assistant":
            message = _assistant(turn)
            names.update((call.id, call.name) for call in message.tool_calls)
            messages.append(message)
        else:
            messages.extend(_user_or_system(turn, index, names))
    return tuple(messages)


def _assistant(turn: MessageParam) -> Message:
    if isinstance(turn.content, str):
        return Message(role="assistant", content=turn.content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in turn.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, dict(block.input)))
        elif isinstance(block, ThinkingBlock):
            continue
        else:
            raise InvalidRequestError(
                f"assistant messages cannot contain {block.type} blocks", param="messages"
            )
    return Message(role="assistant", content="".join(texts), tool_calls=tuple(calls))


def _user_or_system(turn: MessageParam, index: int, names: dict[str, str]) -> list[Message]:
    role = turn.role
    if isinstance(turn.content, str):
        return [Message(role=role, content=turn.content)]
    out: list[Message] = []
    texts: list[str] = []
    images: list[bytes] = []

    def flush() -> None:
        if texts or images:
            out.append(Message(role=role, content="\n".join(texts),
                               images=tuple(images)))
            texts.clear()
            images.clear()

    for number, block in enumerate(turn.content):
        where = f"messages.{index}.content.{number}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            images.append(_image_bytes(block, where))
        elif isinstance(block, ToolResultBlock):
            flush()
            out.append(_tool_result(block, names, where))
        elif isinstance(block, ThinkingBlock):
            continue
        elif isinstance(block, DocumentBlock):
            raise InvalidRequestError("document blocks are not supported", param=where)
        else:
            raise InvalidRequestError(f"{role} messages cannot contain {block.type} blocks",
                                      param=where)
    flush()
    return out


def _tool_result(block: ToolResultBlock, names: dict[str, str], where: str) -> Message:
    texts: list[str] = []
    images: list[bytes] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    else:
        for number, part in enumerate(block.content or ()):
            if isinstance(part, TextBlock):
                texts.append(part.text)
            elif isinstance(part, ImageBlock):
                images.append(_image_bytes(part, f"{where}.content.{number}"))
            else:
                raise InvalidRequestError("document blocks are not supported",
                                          param=f"{where}.content.{number}")
    content = "\n".join(texts)
    if block.is_error:
        # The model must know the call failed; the flag has no place in a chat template.
        content = f"Error: {content}"
    return Message(
        role="tool",
        content=content,
        tool_call_id=block.tool_use_id,
        tool_name=names.get(block.tool_use_id),
        images=tuple(images),
    )


def _image_bytes(block: ImageBlock, where: str) -> bytes:
    source = block.source
    if source.type != "base64":
        # Fetching URLs on a client's behalf would make the server an open proxy.
        raise InvalidRequestError(
            f"image source type '{source.type}' is not supported; send base64 data",
            param=f"{where}.source",
        )
    try:
        return base64.b64decode(source.data or "", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("image data is not valid base64",
                                  param=f"{where}.source.data") from None

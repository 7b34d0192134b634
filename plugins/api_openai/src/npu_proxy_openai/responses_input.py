"""A Responses API request -> the engine's :class:`GenerationRequest`.

``input`` is a string (one user message) or a list of items: messages (roles user,
assistant, system, developer; text and image parts), the model's earlier
``function_call`` items and the client's ``function_call_output`` items. Reasoning
items a client sends back are dropped: chat templates leave earlier thinking out of
the prompt. ``instructions`` become the leading system message; they are not carried
over from a ``previous_response_id`` (OpenAI's rule), the rest of that conversation is.
Anything the server cannot honour is refused by name with an
:class:`InvalidRequestError`.
"""

from __future__ import annotations

from dataclasses import dataclass

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

from .logprobs import refuse_top_logprobs
from .responses_schema import InputItem, InputPart, ResponsesRequest, ResponsesTool, TextFormat
from .translate import decode_call, decode_image_url, structured_output, think_of_effort

#: The ``include`` value that asks for the output text's token log-probabilities.
LOGPROBS = "message.output_text.logprobs"


@dataclass(frozen=True)
class ResponsesWork:
    """What one request asks the engine for, and the conversation it continues with
    (earlier turns and this input, without the instructions), for the store."""

    request: GenerationRequest
    conversation: tuple[Message, ...]
    #: function name -> the namespace tool it came in, for the calls the model makes
    namespaces: dict[str, str]


def responses_request(body: ResponsesRequest, history: tuple[Message, ...] = ()) -> ResponsesWork:
    """The engine request for ``body``, after the stored ``history`` it continues."""
    for name in ("conversation", "prompt"):
        if getattr(body, name) is not None:
            raise InvalidRequestError(
                f"{name} is not supported by this server: send the conversation as input "
                "items, or continue one with previous_response_id",
                name,
            )
    refuse_top_logprobs(body.top_logprobs, "top_logprobs")
    conversation = (*history, *input_messages(body.input))
    if not conversation:
        raise InvalidRequestError("input is required", "input")
    system = (Message(role="system", content=body.instructions),) if body.instructions else ()
    namespaces: dict[str, str] = {}
    tools = tuple(
        spec
        for index, tool in enumerate(body.tools or ())
        for spec in _tools(tool, f"tools[{index}]", namespaces)
    )
    request = GenerationRequest(
        model=body.model,
        messages=(*system, *conversation),
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        options=SamplingOptions(
            max_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p,
            logprobs=LOGPROBS in (body.include or ()),
        ),
        response_format=_format(body.text.format if body.text else None),
        think=think_of_effort(body.reasoning.effort if body.reasoning else None),
    )
    return ResponsesWork(request, conversation, namespaces)


def input_messages(items: str | list[InputItem] | None) -> tuple[Message, ...]:
    """The engine messages of ``input``; consecutive function calls join one
    assistant turn (with the assistant text before them, if any)."""
    if items is None:
        return ()
    if isinstance(items, str):
        return (Message(role="user", content=items),)
    messages: list[Message] = []
    names: dict[str, str] = {}  # call_id -> function name, for the outputs
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.type or ("message" if item.role else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            names[call.id] = call.name
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = Message(
                    role="assistant", content=last.content, tool_calls=(*last.tool_calls, call)
                )
            else:
                messages.append(Message(role="assistant", tool_calls=(call,)))
        elif kind == "function_call_output":
            if not item.call_id:
                raise InvalidRequestError(f"{where}: call_id is required", f"{where}.call_id")
            text, _ = _parts(item.output, where + ".output", images=False)
            messages.append(
                Message(
                    role="tool", content=text, tool_call_id=item.call_id,
                    tool_name=names.get(item.call_id),
                )
            )
        elif kind == "reasoning":
            continue
        else:
            raise InvalidRequestError(
                f"{where}: input items of type {kind!r} are not supported (use 'message', "
                "'function_call', 'function_call_output' or 'reasoning')",
                f"{where}.type",
            )
    return tuple(messages)


def _message(item: InputItem, where: str) -> Message:
    if item.role is None:
        raise InvalidRequestError(f"{where}: a message needs a role", f"{where}.role")
    text, images = _parts(item.content, where + ".content", images=item.role == "user")
    if item.role == "user":
        return Message(role="user", content=text, images=images)
    if item.role == "assistant":
        return Message(role="assistant", content=text)
    return Message(role="system", content=text)  # system and developer alike


def _parts(
    content: str | list[InputPart] | None, where: str, *, images: bool
) -> tuple[str, tuple[bytes, ...]]:
    """The text of ``content`` (parts joined by newlines) and its images."""
    if content is None or isinstance(content, str):
        return content or "", ()
    texts: list[str] = []
    found: list[bytes] = []
    for index, part in enumerate(content):
        param = f"{where}[{index}]"
        if part.type in ("input_text", "output_text", "text") and part.text is not None:
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None:
            texts.append(part.refusal)
        elif images and part.type == "input_image" and part.image_url is not None:
            found.append(decode_image_url(part.image_url, param))
        else:
            raise InvalidRequestError(
                f"{param}: content parts of type {part.type!r} are not supported here "
                f"(use 'input_text'{', or input_image with an image_url' if images else ''})",
                f"{param}.type",
            )
    return "\n".join(texts), tuple(found)


def _function_call(item: InputItem, where: str) -> ToolCall:
    if not item.call_id or not item.name:
        raise InvalidRequestError(
            f"{where}: a function_call item needs call_id and name", f"{where}.call_id"
        )
    return decode_call(item.call_id, item.name, item.arguments or "", f"{where}.arguments")


def _tools(tool: ResponsesTool, where: str, namespaces: dict[str, str]) -> list[ToolSpec]:
    """The functions ``tool`` offers: itself, or those of a namespace (each noted in
    ``namespaces``). Hosted tools (web search, file search, ...) cannot run here."""
    if tool.type == "namespace" and tool.name:
        specs = []
        for index, inner in enumerate(tool.tools or ()):
            if inner.type != "function":
                _unsupported(inner.type, f"{where}.tools[{index}]")
            specs.extend(_tools(inner, f"{where}.tools[{index}]", namespaces))
            namespaces[specs[-1].name] = tool.name
        return specs
    if tool.type != "function":
        _unsupported(tool.type, where)
    if not tool.name:
        raise InvalidRequestError(f"{where}: a function tool needs a name", f"{where}.name")
    return [
        ToolSpec(
            name=tool.name,
            description=tool.description or "",
            parameters=tool.parameters or {"type": "object", "properties": {}},
        )
    ]


def _unsupported(kind: str, where: str) -> None:
    raise InvalidRequestError(
        f"{where}: tools of type {kind!r} are not supported by this server; only function "
        "tools (also grouped in a namespace) are",
        f"{where}.type",
    )


def _tool_choice(body: ResponsesRequest, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools", "tool_choice")
        return choice
    if choice.type != "function":
        raise InvalidRequestError(
            f"tool_choice of type {choice.type!r} is not supported; use 'auto', 'none', "
            "'required' or a function",
            "tool_choice",
        )
    if choice.name not in {t.name for t in tools}:
        raise InvalidRequestError(
            f"tool_choice names function {choice.name!r}, which is not among the tools",
            "tool_choice",
        )
    return choice.name


def _format(fmt: TextFormat | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    return structured_output(fmt.type, fmt.schema_, "text.format.schema")

"""OpenAI request bodies -> the engine's :class:`GenerationRequest`.

Everything a client can get wrong here becomes an :class:`InvalidRequestError` naming
the parameter; what the engine knows better (whether the model takes images, whether
the prompt fits) is left to the engine.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from typing import Any, Literal

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import (
    SEED_MAX,
    GenerationRequest,
    Message,
    ResponseFormat,
    SamplingOptions,
    ThinkLevel,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

from .logprobs import refuse_top_logprobs
from .schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    NamedToolChoice,
    ReasoningEffort,
    ResponseFormatParam,
    SamplingParams,
    ToolParam,
)


def sampling_options(
    body: SamplingParams, max_tokens: int | None, logprobs: bool = False
) -> SamplingOptions:
    """The sampling fields both generation routes share (``n`` is each route's own)."""
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    # checked here, not only by the engine: the choices' seeds derive from this one
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=tuple(s for s in stop if s),
        logprobs=logprobs,
    ).checked()


def think_of_effort(effort: ReasoningEffort | None) -> bool | ThinkLevel | None:
    """OpenAI's reasoning effort as the engine's ``think``: ``none`` turns thinking off,
    ``minimal`` is the lowest level and ``xhigh`` the highest a template knows; no
    effort leaves the model's own default."""
    if effort is None:
        return None
    if effort == "none":
        return False
    return _EFFORT_LEVELS[effort]


_EFFORT_LEVELS: dict[str, ThinkLevel] = {
    "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"
}


def choice_requests(work: GenerationRequest, n: int) -> list[GenerationRequest]:
    """One engine request per choice. With a ``seed``, choice ``i`` samples with
    ``seed + i`` (wrapping past :data:`SEED_MAX`): the choices differ from each other
    and repeat from call to call."""
    seed = work.options.seed
    return [
        work if i == 0 or seed is None
        else replace(work, options=replace(work.options, seed=(seed + i) % (SEED_MAX + 1)))
        for i in range(n)
    ]


def chat_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The engine request for a chat completion."""
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", "stream_options"
        )
    refuse_top_logprobs(body.top_logprobs, "top_logprobs")
    # max_completion_tokens replaced max_tokens; a client that sends both means the new one.
    limit = body.max_completion_tokens
    if limit is None:
        limit = body.max_tokens
    tools = tuple(_tool(t) for t in body.tools or ())
    return GenerationRequest(
        model=body.model,
        messages=_messages(body.messages),
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        options=sampling_options(body, limit, bool(body.logprobs)),
        response_format=_response_format(body.response_format),
        think=think_of_effort(body.reasoning_effort),
    )


def _messages(messages: list[ChatMessage]) -> tuple[Message, ...]:
    names: dict[str, str] = {}  # tool_call id -> function name, for tool results
    result = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        text, images = _content(message, where)
        if message.role in ("system", "developer"):
            if images:
                raise InvalidRequestError(
                    f"{where}: a {message.role} message cannot hold images", f"{where}.content"
                )
            result.append(Message(role="system", content=text))
        elif message.role == "user":
            if message.content is None:
                raise InvalidRequestError(
                    f"{where}: a user message needs content", f"{where}.content"
                )
            result.append(Message(role="user", content=text, images=images))
        elif message.role == "assistant":
            calls = tuple(
                decode_call(c.id, c.function.name, c.function.arguments, f"{where}.tool_calls")
                for c in message.tool_calls or ()
            )
            names.update((c.id, c.name) for c in calls)
            result.append(Message(role="assistant", content=text, tool_calls=calls))
        else:
            if not message.tool_call_id:
                raise InvalidRequestError(
                    f"{where}: a tool message needs tool_call_id", f"{where}.tool_call_id"
                )
            result.append(
                Message(
                    role="tool",
                    content=text,
                    tool_call_id=message.tool_call_id,
                    tool_name=names.get(message.tool_call_id, message.name),
                )
            )
    return tuple(result)


def _content(message: ChatMessage, where: str) -> tuple[str, tuple[bytes, ...]]:
    """The message's text (parts joined by newlines) and the images it carries."""
    if message.content is None or isinstance(message.content, str):
        return message.content or "", ()
    texts: list[str] = []
    images: list[bytes] = []
    for index, part in enumerate(message.content):
        param = f"{where}.content[{index}]"
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None:
            texts.append(part.refusal)
        elif part.type == "image_url" and part.image_url is not None:
            images.append(_image(part, param))
        else:
            raise InvalidRequestError(
                f"{param}: content parts of type {part.type!r} are not supported "
                "(use 'text' or 'image_url')",
                param,
            )
    return "\n".join(texts), tuple(images)


def _image(part: ContentPart, param: str) -> bytes:
    assert part.image_url is not None
    return decode_image_url(part.image_url.url, param)


def decode_image_url(url: str, param: str) -> bytes:
    """The bytes of an inline ``data:<type>;base64,`` image; remote URLs are refused."""
    header, comma, data = url.partition(",")
    # Remote URLs are not fetched: the server would become a way to reach other hosts.
    if not (header.startswith("data:") and header.endswith(";base64") and comma):
        raise InvalidRequestError(
            f"{param}: images must be sent inline as data:<type>;base64,<data> URLs; "
            "the server does not fetch remote images",
            param,
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{param}: the image is not valid base64", param) from None


def decode_call(call_id: str, name: str, arguments: str, param: str) -> ToolCall:
    """A call the client sends back, its ``arguments`` a JSON object in a string."""
    try:
        decoded = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        raise InvalidRequestError(
            f"{param}: function.arguments of call {call_id!r} is not valid JSON", param
        ) from None
    if not isinstance(decoded, dict):
        raise InvalidRequestError(
            f"{param}: function.arguments of call {call_id!r} must be a JSON object", param
        )
    return ToolCall(id=call_id, name=name, arguments=decoded)


def _tool(tool: ToolParam) -> ToolSpec:
    spec = tool.function
    return ToolSpec(
        name=spec.name,
        description=spec.description or "",
        parameters=spec.parameters or {"type": "object", "properties": {}},
    )


def _tool_choice(choice: str | NamedToolChoice | None, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools", "tool_choice")
        return choice
    name = choice.function.name
    if name not in {t.name for t in tools}:
        raise InvalidRequestError(
            f"tool_choice names function {name!r}, which is not among the tools", "tool_choice"
        )
    return name


def _response_format(fmt: ResponseFormatParam | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    schema: dict[str, Any] | None = fmt.json_schema.schema_ if fmt.json_schema else None
    return structured_output(fmt.type, schema, "response_format.json_schema")


def structured_output(
    kind: Literal["json_object", "json_schema"], schema: dict[str, Any] | None, param: str
) -> ResponseFormat:
    """The engine's structured output for ``json_object``, or ``json_schema`` with the
    ``schema`` found at ``param`` (a 400 naming it when it is missing)."""
    if kind == "json_object":
        return ResponseFormat(kind="json")
    if schema is None:
        raise InvalidRequestError(f"{param}: a json_schema format needs a schema", param)
    return ResponseFormat(kind="json_schema", schema=schema)

"""Request bodies of the OpenAI routes, as the ``openai`` SDK's ``*_create_params`` define them.

Models are strict (``"stream": "yes"`` or ``"max_tokens": 1.5`` are refused, not
coerced) and allow unknown fields, so cloud-only parameters (``user``, ``metadata``,
``store``, ``service_tier``, ...) are accepted and ignored. :func:`parse` turns the
first validation problem into an :class:`InvalidRequestError` naming the parameter.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from npu_proxy.engine.errors import InvalidRequestError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

UINT32_MAX = 2**32 - 1

M = TypeVar("M", bound=BaseModel)

TokenCount = Field(default=None, ge=0, le=UINT32_MAX)


class Body(BaseModel):
    """Base of every request object: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


# --- chat messages -------------------------------------------------------------------


class ImageUrl(Body):
    url: str
    detail: str | None = None


class ContentPart(Body):
    """One part of a message's content; only ``text`` and ``image_url`` are served."""

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None
    refusal: str | None = None


class FunctionCall(Body):
    name: str
    arguments: str = ""


class ToolCallParam(Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None


# --- chat options --------------------------------------------------------------------


class StreamOptions(Body):
    include_usage: bool = False


class JsonSchemaSpec(Body):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatParam(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class FunctionSpec(Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class SamplingParams(Body):
    """Sampling fields shared by chat and text completions.

    ``top_k``, ``min_p`` and ``repetition_penalty`` are not OpenAI's, but local
    servers accept them (through the SDK's ``extra_body``), so they are honoured.
    """

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    n: int | None = Field(default=None, ge=1)  # at most NPU_PROXY_MAX_CHOICES
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = TokenCount
    max_completion_tokens: int | None = TokenCount
    response_format: ResponseFormatParam | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning_effort: ReasoningEffort | None = None


class CompletionRequest(SamplingParams):
    """``max_tokens`` defaults to 16, as OpenAI's legacy completions endpoint does."""

    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=0, le=UINT32_MAX)
    best_of: int | None = Field(default=None, ge=1, le=20)
    logprobs: int | None = Field(default=None, ge=0, le=5)


class EmbeddingsRequest(Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


# --- validation ----------------------------------------------------------------------

# Union members and wrappers appear in pydantic's error locations ("str",
# "list[ContentPart]", "function-after[...]"); they are not parameter names.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|[A-Z]\w*|[\w-]+\[.*\])$")


def _param(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _TYPE_TAG.match(part):
            text += f".{part}" if text else part
    return text


def _depth(loc: tuple[int | str, ...]) -> int:
    return sum(1 for part in loc if isinstance(part, int) or not _TYPE_TAG.match(part))


def parse(model: type[M], data: Any) -> M:
    """Validate a decoded JSON body; raises :class:`InvalidRequestError` for the first problem.

    When a value fits none of a union's types, the message lists what each would need.
    The ``param`` is written as OpenAI's SDKs show it: ``messages[0].content``.
    """
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # The deepest location is the most specific: for ``"stop": [1]`` it is
        # ``stop[0]`` (the list was meant) rather than ``stop`` (as a string).
        first = max(errors, key=lambda e: _depth(e["loc"]))
        param = _param(first["loc"])
        if first["type"] == "missing":
            raise InvalidRequestError(f"missing required parameter: '{param}'", param) from None
        reasons: list[str] = []
        for error in errors:
            reason = str(error["msg"]).removeprefix("Value error, ")
            if _param(error["loc"]) == param and reason not in reasons:
                reasons.append(reason)
        message = f"invalid value for '{param}': " + "; or ".join(reasons)
        raise InvalidRequestError(message, param or None) from None

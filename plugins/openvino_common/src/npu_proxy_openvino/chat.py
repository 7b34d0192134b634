"""Chat rendering (template applied exactly once) and tool calls in and out.

The prompt is rendered here with the model's own tokenizer and handed to GenAI with
``apply_chat_template`` off. The same rendered text is what :func:`render_prompt`
returns for token counting, so counts match what the device sees.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from npu_proxy.engine.errors import CapabilityError, InvalidRequestError
from npu_proxy.engine.types import GenerationRequest, Message, ToolCall, ToolSpec

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"


def message_dicts(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Messages in the shape chat templates expect (OpenAI/Hugging Face style)."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_name:
            item["name"] = message.tool_name
        rendered.append(item)
    return rendered


def tool_dicts(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    """Tool definitions as chat templates expect them (OpenAI function format)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def active_tools(request: GenerationRequest) -> tuple[ToolSpec, ...]:
    """The tools the model may call: none for ``tool_choice="none"``, one when named."""
    if not request.tools or request.tool_choice == "none":
        return ()
    if request.tool_choice in ("auto", "required"):
        return request.tools
    chosen = tuple(tool for tool in request.tools if tool.name == request.tool_choice)
    if not chosen:
        raise InvalidRequestError(
            f"tool_choice names '{request.tool_choice}', which is not among the tools",
            param="tool_choice",
        )
    return chosen


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The exact text the model sees.

    A raw ``prompt`` is returned untouched. ``messages`` go through the model's chat
    template once, with the active tools passed to the template (GenAI's renderer
    injects a tool description when the template itself has no tool support).
    """
    if request.suffix is not None:
        raise CapabilityError(f"{request.model} does not support insert (suffix)")
    if request.images:
        raise CapabilityError(f"{request.model} does not support images")
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    tools = active_tools(request)
    return str(
        tokenizer.apply_chat_template(
            message_dicts(request.messages),
            add_generation_prompt=True,
            tools=tool_dicts(tools) if tools else None,
            extra_context=thinking_context(request),
        )
    )


def thinking_context(request: GenerationRequest) -> dict[str, Any] | None:
    """What a reasoning template reads: ``enable_thinking`` (Qwen3, SmolLM3) and, for a
    level, ``reasoning_effort`` (gpt-oss); None leaves the template's own default."""
    if request.think is None:
        return None
    context: dict[str, Any] = {"enable_thinking": request.think is not False}
    if isinstance(request.think, str):
        context["reasoning_effort"] = request.think
    return context


def forced_tool_schema(tools: tuple[ToolSpec, ...]) -> dict[str, Any]:
    """A JSON schema that only admits a call of one of ``tools``.

    Used for ``tool_choice="required"`` or a named tool: structured output then makes
    even a small model answer with a well-formed call. The shape matches the tool-call
    syntax GenAI's renderer describes to the model (``{"tool_calls": [...]}``).
    """
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool.name]},
                "arguments": tool.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    item = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": item, "minItems": 1}},
        "required": ["tool_calls"],
    }


# --- parsing tool calls out of generated text -----------------------------------------

_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_tool_calls(text: str, known: set[str]) -> tuple[str, list[ToolCall]]:
    """Split ``text`` into remaining content and the tool calls it contains.

    Understood shapes: Hermes/Qwen ``<tool_call>{...}</tool_call>`` blocks (anywhere in
    the text, closing tag optional at the end), Mistral's ``[TOOL_CALLS]`` followed by
    a JSON list of calls or by ``name[ARGS]{...}`` calls, or the whole answer being
    JSON (Llama 3 and most others): a call
    ``{"name": ..., "arguments"|"parameters": {...}}``, a list of calls, or
    ``{"tool_calls": [...]}`` (optionally in a Markdown code fence). A call naming a
    function not in ``known`` is not a call: the text is returned untouched.
    """
    if MISTRAL_CALLS in text:
        return _mistral_calls(text, known)
    if HERMES_OPEN in text:
        calls: list[ToolCall] = []
        for block in _HERMES_BLOCK.findall(text):
            parsed = _loads(block)
            found = _calls_from(parsed, known) if parsed is not None else None
            if not found:
                return text, []
            calls.extend(found)
        remaining = _HERMES_BLOCK.sub("", text).strip()
        return remaining, calls
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("{", "[")):
        return text, []
    parsed = _loads(body)
    found = _calls_from(parsed, known) if parsed is not None else None
    return ("", found) if found else (text, [])


def _mistral_calls(text: str, known: set[str]) -> tuple[str, list[ToolCall]]:
    head, _, body = text.partition(MISTRAL_CALLS)
    calls: list[ToolCall] = []
    for segment in body.split(MISTRAL_CALLS):
        segment = segment.strip()
        name, marker, arguments = segment.partition(MISTRAL_ARGS)
        if marker:  # name[ARGS]{...}: the newer tokenizers' form
            parsed = _loads(arguments)
            call = _call_from({"name": name.strip(), "arguments": parsed}, known)
            found = [call] if call is not None and parsed is not None else None
        else:  # a JSON list of calls
            value = _loads(segment)
            found = _calls_from(value, known) if value is not None else None
        if not found:
            return text, []
        calls.extend(found)
    return head.strip(), calls


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    # Models often add a sentence after the JSON; take the first complete value.
    try:
        value, _end = json.JSONDecoder().raw_decode(text.strip())
    except ValueError:
        return None
    return value


def _calls_from(value: Any, known: set[str]) -> list[ToolCall] | None:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for item in items:
        call = _call_from(item, known)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _call_from(item: Any, known: set[str]) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # OpenAI-shaped
        item = {**item["function"], "id": item.get("id")}
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _loads(arguments) if arguments.strip() else {}
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    if known and name not in known:
        return None
    call_id = item.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = "call_" + uuid.uuid4().hex[:24]
    return ToolCall(id=call_id, name=name, arguments=arguments)


class ToolCallFilter:
    """Streams text through, holding back what may turn out to be a tool call.

    Text that plainly is prose is passed on at once; an answer that starts like JSON
    or a ``<tool_call>`` tag is held until the end, then either parsed into calls or
    released as text. Held-back text is never lost.
    """

    def __init__(self, known: set[str]) -> None:
        self._known = known
        self._held = ""
        self._prose = False

    def feed(self, piece: str) -> str:
        """Text that can be shown now (possibly empty)."""
        self._held += piece
        if not self._prose:
            start = self._held.lstrip()
            if not start:
                return ""
            if start.startswith(("{", "[", "```", HERMES_OPEN)) or HERMES_OPEN.startswith(start):
                return ""
            self._prose = True
        # In prose, hold back from a Hermes tag (or what may be its beginning) onwards.
        tag = self._held.find(HERMES_OPEN)
        if tag < 0:
            tag = _partial_suffix(self._held, HERMES_OPEN)
        if tag < 0:
            out, self._held = self._held, ""
            return out
        out, self._held = self._held[:tag], self._held[tag:]
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The remaining text and the parsed tool calls (empty if there are none)."""
        held, self._held = self._held, ""
        if not held:
            return "", []
        return parse_tool_calls(held, self._known)


def _partial_suffix(text: str, tag: str) -> int:
    """Index where a proper prefix of ``tag`` ends ``text``, or -1."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return len(text) - size
    return -1

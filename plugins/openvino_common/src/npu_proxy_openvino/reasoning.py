"""Reasoning models: which templates think, and the thinking split from the answer as
the text streams.

Reasoning models write their thinking inline, between markers their chat template
knows (Qwen3, QwQ, DeepSeek-R1 distills, SmolLM3, Phi-4-reasoning: ``<think>`` ...
``</think>``). :func:`markers_for` finds a model's markers: its family in
:data:`FAMILY_MARKERS` first, then the markers its template writes. A template that
opens the thinking itself (DeepSeek-R1 distills end the prompt with ``<think>``) makes
the answer start inside it, which :class:`ThinkingSplitter` is told with ``inside``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

THINK = ("<think>", "</think>")


@dataclass(frozen=True, slots=True)
class Markers:
    """The strings that open and close a model's reasoning.

    ``answer``: headers that may come before the answer (after the reasoning, or
    instead of it), dropped; ``trailers``: end-of-message strings dropped from the
    answer. ``special``: the markers are special tokens, which GenAI's decoding skips
    by default, so the text must be decoded with them kept for the split to see them.
    """

    open: str
    close: str
    answer: tuple[str, ...] = ()
    trailers: tuple[str, ...] = ()
    special: bool = False


#: gpt-oss's harmony format: the reasoning is the ``analysis`` channel, the answer the
#: ``final`` channel, each message ended by a special token (``<|return|>`` at the end).
HARMONY = Markers(
    open="<|channel|>analysis<|message|>",
    close="<|end|>",
    answer=("<|start|>assistant<|channel|>final<|message|>", "<|channel|>final<|message|>"),
    trailers=("<|return|>", "<|end|>", "<|call|>"),
    special=True,
)

#: Model families (GGUF ``general.architecture`` or the IR's ``model_type``) and the
#: markers their reasoning uses; families not listed fall back to their template.
FAMILY_MARKERS: dict[str, Markers] = {
    **{family: Markers(*THINK)
       for family in ("qwen3", "qwen3moe", "deepseek2", "smollm3", "phi3")},
    **{family: HARMONY for family in ("gpt-oss", "gpt_oss", "gptoss")},
}


def template_thinks(template: str) -> bool:
    """Whether a chat template knows reasoning: it takes ``enable_thinking`` (Qwen3,
    SmolLM3), writes a reasoning marker (DeepSeek-R1 distills) or harmony's channels
    (gpt-oss)."""
    return "enable_thinking" in template or "<|channel|>" in template or any(
        markers.open in template for markers in {*FAMILY_MARKERS.values()}
    )


def markers_for(family: str, template: str) -> Markers | None:
    """The reasoning markers of a model, or None when it does not reason."""
    if not template_thinks(template):
        return None
    known = FAMILY_MARKERS.get(family.lower())
    if known is not None:
        return known
    if "<|channel|>" in template:
        return HARMONY
    return next((m for m in {*FAMILY_MARKERS.values()} if m.open in template), Markers(*THINK))


Part = tuple[Literal["thinking", "text"], str]


class ThinkingSplitter:
    """Splits streamed text into thinking and answer at the model's markers.

    Feed pieces in order; each call returns the parts now known (``("thinking", ...)``
    or ``("text", ...)``), holding back only what may be the start of a marker. The
    markers themselves are dropped. ``inside`` says the prompt already opened the
    thinking. Thinking happens once, at the start: after the closing marker
    everything is answer.
    """

    def __init__(self, markers: Markers, inside: bool = False) -> None:
        self.markers = markers
        self._state: Literal["start", "thinking", "after", "answer"] = (
            "thinking" if inside else "start"
        )
        self._held = ""

    @property
    def thinking(self) -> bool:
        """Whether the text so far is inside the reasoning (it opened and not closed)."""
        return self._state == "thinking"

    def feed(self, piece: str) -> list[Part]:
        text = self._held + piece
        self._held = ""
        parts: list[Part] = []
        markers = self.markers
        while text:
            if self._state == "after":  # the blank lines after the closing marker go
                text = text.lstrip("\r\n")
                if not text:
                    break
                if _could_become(text, markers.answer):
                    self._held = text
                    break
                text = _without_header(text, markers.answer)
                self._state = "answer"
                continue
            if self._state == "answer":
                text, held = _without_trailers(text, markers.trailers)
                if text:
                    parts.append(("text", text))
                self._held = held
                break
            if self._state == "start":
                stripped = text.lstrip()
                if _could_become(stripped, (markers.open, *markers.answer)):
                    self._held = text
                    break
                if stripped.startswith(markers.open):
                    self._state = "thinking"
                    text = stripped[len(markers.open):]
                    continue
                headed = _without_header(stripped, markers.answer)
                if headed != stripped:  # straight to the answer's channel
                    text = headed
                self._state = "answer"  # the model answered without thinking
                continue
            at = text.find(markers.close)
            if at >= 0:
                if at:
                    parts.append(("thinking", text[:at]))
                self._state = "after"
                text = text[at + len(markers.close):]
                continue
            keep = _partial_suffix(text, markers.close)
            if len(text) > keep:
                parts.append(("thinking", text[: len(text) - keep]))
            self._held = text[len(text) - keep:]
            break
        return parts

    def finish(self) -> list[Part]:
        """What was held back, once the generation ended."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [("thinking" if self._state == "thinking" else "text", held)]


def _could_become(text: str, headers: tuple[str, ...]) -> bool:
    """Whether ``text`` is the start of one of ``headers`` (not yet all of it)."""
    return any(len(text) < len(h) and h.startswith(text) for h in headers)


def _without_header(text: str, headers: tuple[str, ...]) -> str:
    """``text`` without the first of ``headers`` it starts with."""
    for header in headers:
        if text.startswith(header):
            return text[len(header):]
    return text


def _without_trailers(text: str, trailers: tuple[str, ...]) -> tuple[str, str]:
    """``text`` without any of ``trailers``, and its end that may begin one (held)."""
    if not trailers:
        return text, ""
    for trailer in trailers:
        text = text.replace(trailer, "")
    keep = max(_partial_suffix(text, t) for t in trailers)
    return text[: len(text) - keep], text[len(text) - keep:]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (0: none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[len(text) - size:]):
            return size
    return 0


def opens_thinking(tokenizer: Any, markers: Markers) -> bool:
    """Whether the template itself opens the thinking at the end of a prompt (then the
    model's output starts inside it). Blocking: renders a one-message conversation."""
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    return str(probe).rstrip().endswith(markers.open)


class ThinkingBudget:
    """A cap on reasoning tokens (Anthropic's ``budget_tokens``), spent one generated
    token at a time while the reasoning is open.

    GenAI has no such stop of its own, so the model wrapper ends the generation when
    :meth:`spent` says the budget is gone, closes the reasoning itself and lets the
    model answer from there (:func:`continuation`).
    """

    def __init__(self, tokens: int) -> None:
        self.left = tokens
        #: the budget ran out while the model was still reasoning
        self.cut = False

    def spend(self, splitter: ThinkingSplitter) -> None:
        """Count one generated token; call before ``splitter`` sees it."""
        if splitter.thinking:
            self.left -= 1

    def spent(self, splitter: ThinkingSplitter) -> bool:
        """After ``splitter`` saw the token: whether the budget is gone while the
        reasoning is still open (then the generation should stop)."""
        self.cut = self.left <= 0 and splitter.thinking
        return self.cut


def continuation(
    tokenizer: Any, prompt: tuple[int, ...], generated: str, markers: Markers
) -> tuple[int, ...]:
    """The prompt that resumes an answer whose reasoning was closed early: the prompt
    as it was, the reasoning generated so far and the closing marker (blocking)."""
    from . import tokens

    # harmony goes on in the final channel; ``<think>`` models after a blank line
    tail = (markers.close + markers.answer[0] if markers.answer
            else f"\n{markers.close}\n\n")
    return prompt + tokens.encode(tokenizer, generated + tail, special=False)


def count_reasoning_tokens(tokenizer: Any, thinking: str) -> int:
    """The tokens of the thinking text, as the model's tokenizer spells it (blocking)."""
    if not thinking:
        return 0
    encoded = tokenizer.encode(thinking, add_special_tokens=False)
    return int(encoded.input_ids.get_shape()[1])

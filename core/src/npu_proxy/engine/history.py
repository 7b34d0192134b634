"""Fitting a conversation into a context by dropping its oldest turns.

Ollama's chat keeps working when a conversation outgrows the model's context: it drops
the oldest messages (never the system prompt, never the newest message) until the
prompt fits; a prompt too long even alone keeps its end (:func:`keep_end`). For a
request with :attr:`GenerationRequest.truncate` set, the engine
(``Engine._fit_context``) calls these with its measure of "fits": the
backend's ``count_tokens``, which renders the chat template and counts with the
model's tokenizer, plus room for the answer. The choice of what to drop lives here,
once; how to measure lives with the backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from .types import GenerationRequest, Message

#: How far past the best cut :func:`keep_end` looks for the start of a word.
_WORD_REACH = 64


async def fit_history(
    messages: Sequence[Message], fits: Callable[[tuple[Message, ...]], Awaitable[bool]]
) -> tuple[Message, ...] | None:
    """The longest recent part of ``messages`` that ``fits`` (awaited), or None.

    Kept always: the leading system messages and the last message. Dropped first: the
    oldest of the others, one turn at a time; a kept part never starts with a tool
    result whose call was dropped. ``messages`` itself is returned when it fits.
    ``fits`` is called O(log n) times (it must be monotonic: a shorter history that
    drops more turns fits whenever a longer one does).
    """
    whole = tuple(messages)
    if await fits(whole):
        return whole
    head = 0
    while head < len(whole) - 1 and whole[head].role == "system":
        head += 1
    system, rest = whole[:head], whole[head:]
    # Candidate cut points: rest[cut:] is kept. A cut may not orphan a tool result.
    cuts = [cut for cut in range(1, len(rest)) if rest[cut].role != "tool"] or (
        [len(rest) - 1] if rest else [])

    def kept(cut: int) -> tuple[Message, ...]:
        return system + rest[cut:]

    # The smallest cut that fits keeps the most history; fitting is monotonic in the cut.
    low, high, best = 0, len(cuts) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if await fits(kept(cuts[middle])):
            best, high = cuts[middle], middle - 1
        else:
            low = middle + 1
    return kept(best) if best is not None else None


async def keep_end(
    request: GenerationRequest, fits: Callable[[GenerationRequest], Awaitable[bool]]
) -> GenerationRequest | None:
    """``request`` cut to fit: its leading system messages and the longest end of its last
    message (of a raw prompt) that ``fits`` (awaited), or None when not even an empty
    one does. Ollama keeps the end of a prompt longer than the context the same way.

    The cut starts a word when one starts within a few characters; ``fits`` is called
    O(log n) times for a text of n characters (it must be monotonic, as for
    :func:`fit_history`).
    """
    if request.messages is None:
        text = request.prompt or ""

        def cut(start: int) -> GenerationRequest:
            return replace(request, prompt=text[start:])
    else:
        *earlier, last = request.messages
        head = 0
        while head < len(earlier) and earlier[head].role == "system":
            head += 1
        system = tuple(earlier[:head])
        text = last.content

        def cut(start: int) -> GenerationRequest:
            return replace(request, messages=(*system, replace(last, content=text[start:])))

    # The smallest start that fits keeps the most; fitting is monotonic in the start.
    low, high, best = 0, len(text), None
    while low <= high:
        middle = (low + high) // 2
        if await fits(cut(middle)):
            best, high = middle, middle - 1
        else:
            low = middle + 1
    if best is None:
        return None
    word = next((i for i in range(best, min(best + _WORD_REACH, len(text)))
                 if i > 0 and text[i - 1].isspace() and not text[i].isspace()), best)
    return cut(word if word == best or await fits(cut(word)) else best)


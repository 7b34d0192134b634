"""The prompts every target gets: sized to an exact token count, distinct per request.

A prompt of ``pp512`` is a chat whose rendered prompt (the model's template applied)
counts 512 tokens with the model's own tokenizer, or as close below as the words
allow. Each request's prompt starts with its own tag, so no target serves it from a
prefix cache filled by an earlier request (llama-server keeps each slot's prefix,
npu-proxy can keep finished prompts); the shared part is the template's few tokens.
The same prompts go to every target, so a device and a server are held to the same
text; the count a table shows is always the one the target itself reported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Literal

Role = Literal["system", "user", "assistant"]
#: One chat turn: role and text.
Turn = tuple[Role, str]
#: Tokens of a chat as the model's template renders it, with its tokenizer.
Counter = Callable[[Sequence[Turn]], Awaitable[int]]

#: Asks for a long answer, so a greedy model keeps writing up to the asked length.
INSTRUCTION = "Write a long story with these words."

#: Filler: common words, each one token for most tokenizers when preceded by a space.
WORDS = (
    "river mountain garden window market letter winter summer bridge island forest "
    "station castle harbor village meadow candle mirror pencil ladder basket engine "
    "kitchen library blanket compass lantern violin orchard valley desert ocean "
    "thunder silver copper marble feather shadow morning evening journey country "
    "painter doctor farmer sailor teacher student writer singer builder driver "
    "yellow purple orange little gentle quiet bright simple strange golden"
).split()

#: The agent conversation: what the assistant said and what the user asks next.
ANSWERS = (
    "I read the file and found the function that parses the settings.",
    "The test fails because the default port is read before the override.",
    "I changed the order so the override is applied first, and ran the tests.",
    "All tests pass now; the linter reports one long line in the same module.",
    "I wrapped the line and added a docstring that states the contract.",
    "The change is ready: two files touched, no behaviour change elsewhere.",
    "I also checked the documentation, which already describes the new order.",
    "Nothing else refers to the old name, so the rename is complete.",
)
QUESTIONS = (
    "Open the configuration module and tell me where the port is parsed.",
    "Why does the test for the port override fail on the first run?",
    "Fix it, keeping the public function signatures exactly as they are.",
    "Run the linter as well and tell me what it reports for that module.",
    "Fix the lint finding and make sure the docstring explains the behaviour.",
    "Summarise the change for the commit message in two short sentences.",
    "Does the documentation need an update after this change, and where?",
    "Check that nothing else still uses the old name of the function.",
)


def filler(tag: str, words: int) -> str:
    """``tag`` then ``words`` filler words (their order depends on the tag)."""
    offset = sum(map(ord, tag)) % len(WORDS)
    chosen = (WORDS[(offset + i * 7) % len(WORDS)] for i in range(words))
    return f"[{tag}] " + " ".join(chosen)


async def sized_chat(count: Counter, tokens: int, tag: str) -> list[Turn]:
    """A one-message chat that renders to ``tokens`` tokens (at most; exact when the
    words allow), its text starting with ``tag``.

    The smallest such chat is the tag and the instruction: a smaller ``tokens`` gives
    that one (its real count is what the target reports).
    """

    def chat(words: int, padding: int = 0) -> list[Turn]:
        return [("user", filler(tag, words) + " a" * padding + "\n\n" + INSTRUCTION)]

    low, high = 0, max(tokens, 1)
    while await count(chat(high)) <= tokens:  # words are at least one token: rarely runs
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if await count(chat(middle)) <= tokens:
            low = middle
        else:
            high = middle
    best = chat(low)
    have = await count(best)
    for padding in range(1, min(tokens - have, 8) + 1):  # " a" is one token nearly always
        padded = chat(low, padding)
        size = await count(padded)
        if size > tokens:
            break
        best, have = padded, size
        if size == tokens:
            break
    return best


async def system_prompt(count: Counter, tokens: int, tag: str) -> str:
    """An agent's system prompt of about ``tokens`` tokens, distinct for ``tag``."""
    chat = await sized_chat(count, tokens, tag)
    return chat[0][1].replace(INSTRUCTION, "Use the words above as the names of tools.")


def conversation(system: str, turns: int) -> Iterator[list[Turn]]:
    """The chats of turns 1..``turns`` of an agent session: each turn resends the whole
    history with one more answer and a new question, as coding agents do."""
    messages: list[Turn] = [("system", system), ("user", QUESTIONS[0])]
    for turn in range(turns):
        if turn:
            messages += [("assistant", ANSWERS[(turn - 1) % len(ANSWERS)]),
                         ("user", QUESTIONS[turn % len(QUESTIONS)])]
        yield list(messages)


def texts_to_embed(count: int, tag: str) -> list[str]:
    """``count`` distinct sentences of 10-20 words (new for every ``tag``, so an
    embedding cache never answers them)."""
    return [filler(f"{tag}-{i}", 10 + i % 11) for i in range(count)]

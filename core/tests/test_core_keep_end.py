"""``keep_end``: the longest end of a too-long prompt that fits, cut at a word."""

from __future__ import annotations

from npu_proxy.engine.history import keep_end
from npu_proxy.engine.types import GenerationRequest, Message


def words(request: GenerationRequest) -> int:
    if request.messages is None:
        return len((request.prompt or "").split())
    return sum(len(m.content.split()) for m in request.messages)


async def test_a_raw_prompt_keeps_its_last_words() -> None:
    text = " ".join(f"w{i}" for i in range(1000))
    calls = 0

    async def fits(request: GenerationRequest) -> bool:
        nonlocal calls
        calls += 1
        return words(request) <= 100

    kept = await keep_end(GenerationRequest(model="m", prompt=text), fits)
    assert kept is not None and kept.prompt == " ".join(f"w{i}" for i in range(900, 1000))
    assert calls < 20  # a binary search over 5,000 characters


async def test_a_conversation_keeps_its_system_prompt_and_the_end_of_its_last_message() -> None:
    request = GenerationRequest(model="m", messages=(
        Message("system", "be brief"), Message("user", "old " * 30),
        Message("assistant", "answer"), Message("user", "x " * 500 + "the end")))

    async def fits(candidate: GenerationRequest) -> bool:
        return words(candidate) <= 52

    kept = await keep_end(request, fits)
    assert kept is not None and kept.messages is not None
    assert [m.role for m in kept.messages] == ["system", "user"]
    assert kept.messages[0].content == "be brief"
    assert kept.messages[1].content.endswith("the end") and words(kept) == 52
    assert not kept.messages[1].content.startswith(" ")


async def test_nothing_fits_gives_none() -> None:
    async def never(request: GenerationRequest) -> bool:
        return False

    assert await keep_end(GenerationRequest(model="m", prompt="a b c"), never) is None


async def test_text_without_spaces_is_cut_at_a_character() -> None:
    async def fits(request: GenerationRequest) -> bool:
        return len(request.prompt or "") <= 10

    kept = await keep_end(GenerationRequest(model="m", prompt="字" * 100), fits)
    assert kept is not None and kept.prompt == "字" * 10

"""Dropping a conversation's oldest turns to fit a context (``fit_history``)."""

from __future__ import annotations

from npu_proxy.engine.history import fit_history
from npu_proxy.engine.types import Message


def convo(*roles: str) -> tuple[Message, ...]:
    return tuple(Message(role=r, content=f"{r} {i}") for i, r in enumerate(roles))


def at_most(n: int, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    async def fits(messages: tuple[Message, ...]) -> bool:
        if calls is not None:
            calls.append(len(messages))
        return len(messages) <= n

    return fits


async def test_a_conversation_that_fits_is_kept_whole() -> None:
    messages = convo("system", "user", "assistant", "user")
    assert await fit_history(messages, at_most(4)) == messages


async def test_the_oldest_turns_go_first_and_the_system_prompt_stays() -> None:
    messages = convo("system", "user", "assistant", "user", "assistant", "user")
    kept = await fit_history(messages, at_most(3))
    assert kept == (messages[0], messages[4], messages[5])


async def test_the_last_message_alone_when_nothing_else_fits() -> None:
    messages = convo("user", "assistant", "user")
    assert await fit_history(messages, at_most(1)) == (messages[2],)


async def test_none_when_not_even_the_last_message_fits() -> None:
    messages = convo("system", "user", "assistant", "user")
    assert await fit_history(messages, at_most(1)) is None


async def test_a_tool_result_is_never_kept_without_its_call() -> None:
    messages = convo("user", "assistant", "tool", "assistant", "user")
    # Three would fit, but messages[2:] starts with an orphaned tool result: keep two.
    assert await fit_history(messages, at_most(3)) == messages[3:]
    ending = convo("user", "assistant", "assistant", "tool")
    # The newest message is a tool result: its call stays with it.
    assert await fit_history(ending, at_most(2)) == ending[2:]


async def test_the_search_measures_few_candidates() -> None:
    messages = convo("system", *["user", "assistant"] * 50, "user")
    calls: list[int] = []
    kept = await fit_history(messages, at_most(11, calls))
    assert kept is not None and len(kept) == 11
    assert kept[0].role == "system" and kept[-1] == messages[-1]
    assert len(calls) <= 9  # the whole, then a binary search over 101 cuts

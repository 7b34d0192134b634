"""The bench's pieces that need no model: prompt sizing, the agent conversation,
summaries and tables, the power source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from npu_proxy_openvino.bench.machine import on_battery
from npu_proxy_openvino.bench.measure import Batch, Sample, Stat
from npu_proxy_openvino.bench.prompts import (
    Turn,
    conversation,
    sized_chat,
    texts_to_embed,
)
from npu_proxy_openvino.bench.records import Results, table
from npu_proxy_openvino.bench.runner import Plan, Runner


async def words(turns: Sequence[Turn]) -> int:
    """A tokenizer stand-in: one token per word, three for the template."""
    return 3 + sum(len(text.split()) for _, text in turns)


async def test_a_prompt_has_the_asked_size_and_starts_with_its_tag() -> None:
    for size in (40, 128, 1000):
        chat = await sized_chat(words, size, "r0 s1")
        assert await words(chat) == size
        assert chat[0][1].startswith("[r0 s1] ")


async def test_two_runs_never_send_the_same_prompts() -> None:
    """A server's prefix cache (llama-server's slots) may hold the previous run's."""

    class Silent:
        def start(self, total: int) -> None: ...
        def describe(self, label: str) -> None: ...
        def advance(self) -> None: ...

    plan = Plan(prompts=(64,), gens=(4,), reps=2)
    first, second = (Runner(plan, [], words, Results(), Silent()) for _ in range(2))
    await first.prepare()
    await second.prepare()
    texts = [{c[0][1] for c in runner._chats.values()} for runner in (first, second)]
    assert len(texts[0]) == 2 and not texts[0] & texts[1]


def test_the_agent_conversation_grows_by_an_answer_and_a_question() -> None:
    turns = list(conversation("rules", 3))
    assert [len(t) for t in turns] == [2, 4, 6]
    assert turns[2][:4] == turns[1] and turns[0][0] == ("system", "rules")
    assert len(set(texts_to_embed(5, "a")) | set(texts_to_embed(5, "b"))) == 10


def test_rates_come_only_from_reported_counts() -> None:
    sample = Sample(sent=0.0, first=0.5, end=1.5, prompt_tokens=100, completion_tokens=11)
    assert (sample.ttft, sample.prefill_rate, sample.decode_rate) == (0.5, 200.0, 10.0)
    silent = Sample(sent=0.0, first=0.5, end=1.5, prompt_tokens=None, completion_tokens=None)
    assert (silent.prefill_rate, silent.decode_rate) == (None, None)
    assert Batch((sample, sample)).total_rate == 22 / 1.5
    assert Batch((sample, silent)).total_rate is None
    stat = Stat.of([3.0, None, 1.0, 2.0])
    assert stat == Stat(2.0, 1.0, 3.0, 3) and stat.format(1) == "2.0 (1.0-3.0)"
    assert Stat.of([None]) is None and Stat(1.0, 1.0, 1.0, 1).format(2) == "1.00"


def test_tables_align_and_markdown_delimiters_are_valid() -> None:
    assert table(["a", "n"], [["xy", "5"]]).splitlines() == ["a   n", "--  -", "xy  5"]
    assert table(["a", "n"], [["xy", "5"]], markdown=True).splitlines() == [
        "| a   |   n |", "| --- | --: |", "| xy  |   5 |"]


def test_the_power_source_is_read_where_the_os_says_it(tmp_path: Path) -> None:
    def supply(name: str, **files: str) -> None:
        (tmp_path / name).mkdir()
        for key, value in files.items():
            (tmp_path / name / key).write_text(value + "\n")

    assert on_battery(tmp_path / "absent") is None
    assert on_battery(tmp_path) is None  # a desktop without power-supply entries
    supply("BAT0", type="Battery", status="Discharging")
    assert on_battery(tmp_path) is True
    supply("AC", type="Mains", online="1")
    assert on_battery(tmp_path) is False

"""The prefix ledger's rule on its own: whole blocks, never the last token, least
recently used forgotten first, nothing vouched for before the cache is measured."""

from __future__ import annotations

from npu_proxy_openvino.prefix_ledger import PrefixLedger


def measured(capacity_blocks: int) -> PrefixLedger:
    ledger = PrefixLedger(block=4, safety=1.0)
    ledger.measure(held_tokens=4, usage_percent=100.0 / capacity_blocks)
    assert ledger.capacity == capacity_blocks
    return ledger


def test_nothing_is_vouched_for_before_the_cache_is_measured() -> None:
    ledger = PrefixLedger(block=4)
    prompt = list(range(20))
    assert ledger.admit(prompt) == 0
    assert ledger.admit(prompt) == 0
    ledger.measure(held_tokens=20, usage_percent=10.0)  # 5 blocks are 10%: 50 blocks
    assert ledger.capacity == 25  # half of them
    assert ledger.admit(prompt) == 19  # every whole block, but never the last token
    ledger.measure(held_tokens=20, usage_percent=50.0)  # a smaller observation: no change
    assert ledger.capacity == 25
    ledger.measure(held_tokens=20, usage_percent=5.0)  # the cache grew
    assert ledger.capacity == 50


def test_only_whole_leading_blocks_of_prompts_count() -> None:
    ledger = measured(100)
    assert ledger.admit([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 0
    assert ledger.admit([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0]) == 8
    assert ledger.admit([1, 2, 3, 4, 5, 6, 7, 9, 9, 9, 9]) == 4  # the second block differs
    assert ledger.admit([0, 2, 3, 4, 5, 6, 7, 8]) == 0  # the first block differs
    assert ledger.admit([1, 2, 3, 4, 5, 6]) == 4  # the partial block was never recorded


def test_the_least_recently_used_blocks_go_first_and_generated_ones_take_room() -> None:
    ledger = measured(4)
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 8, 8, 8, 8]
    ledger.admit([*a, 0])
    ledger.admit([*b, 0])
    assert len(ledger) == 4
    assert ledger.admit([*a, 0]) == 8  # a is now the most recent
    ledger.occupy(tokens=5)  # two blocks of generated tokens push b out
    assert len(ledger) == 4
    assert ledger.admit([*b, 0]) == 0
    assert ledger.admit([*a, 0]) == 0  # b's return pushed a out in turn

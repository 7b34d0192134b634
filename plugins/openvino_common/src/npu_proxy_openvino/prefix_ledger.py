"""What a continuous-batching pipeline's prefix cache holds for certain: cached-token counts.

GenAI's prefix cache (``SchedulerConfig.enable_prefix_caching``) keeps the KV blocks of
what each sequence read, keyed by a hash of every token up to the end of the block, and
a new prompt reuses the longest run of leading blocks it finds (never its last token,
which must be read to produce the first logits). When it needs room it overwrites the
least recently used of those blocks. GenAI does not report per request how many prompt
tokens it reused, so the step loop keeps this ledger beside it: the same rule, on whole
blocks of prompt tokens only, with a budget smaller than the cache's own.

The number it gives is one the cache is sure to have reused, never more:

- it matches only whole blocks of :data:`LEDGER_BLOCK` tokens (GenAI's CPU block; a
  multiple of the GPU's 16), and only prompt tokens, where GenAI also reuses blocks
  that generated tokens filled and a partly filled last block;
- it forgets the least recently used blocks once it holds :attr:`capacity` blocks,
  and counts every block a sequence fills (generated ones too) against that budget;
  the budget is a fraction of the blocks the cache was measured to hold, so by the
  inclusion property of LRU caches, whatever the ledger still holds, the larger cache
  still holds (the test ``test_ov_cpu_prefix_cache`` checks the figure against GenAI
  reading one token a step);
- until the cache's size has been measured (at a request's first token: its prompt's
  blocks are in use, so the usage then bounds the size from below) it vouches for
  nothing; a cache grown on demand (``NPU_PROXY_KV_CACHE_GB=0``)
  is only as large as the largest working set seen, so little is vouched for there.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence

#: Tokens per block the ledger matches (GenAI's KV block on CPU).
LEDGER_BLOCK = 32
#: The share of the measured cache the ledger lets itself account for.
SAFETY = 0.5


class PrefixLedger:
    """The blocks a prefix cache surely holds, least recently used first."""

    def __init__(self, block: int = LEDGER_BLOCK, safety: float = SAFETY) -> None:
        self.block = block
        self._safety = safety
        self._blocks: OrderedDict[object, None] = OrderedDict()
        self._filler = itertools.count()
        #: blocks the ledger may hold; None until the cache has been measured
        self.capacity: int | None = None

    def __len__(self) -> int:
        return len(self._blocks)

    def admit(self, ids: Sequence[int]) -> int:
        """Record a prompt the pipeline is about to read; returns the tokens of it that
        the cache will surely reuse."""
        keys = self._keys(ids)
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            hits += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        self._trim()
        if self.capacity is None:
            return 0
        return max(min(hits * self.block, len(ids) - 1), 0)

    def occupy(self, tokens: int) -> None:
        """A sequence filled ``tokens`` more tokens of cache (what it generated): blocks
        no later prompt is counted against, but that push older ones out."""
        for _ in range(math.ceil(tokens / self.block)):
            self._blocks[("filled", next(self._filler))] = None
        self._trim()

    def measure(self, held_tokens: int, usage_percent: float) -> None:
        """Size the budget from one observation: the cache was ``usage_percent`` full
        while sequences held at least ``held_tokens`` tokens of it. A cache never
        shrinks (one grown on demand only grows), so the largest size observed is the
        budget; anything else the usage counts only makes an observation smaller."""
        if usage_percent <= 0 or held_tokens <= 0:
            return
        used = math.ceil(held_tokens / self.block)
        size = max(int(used * 100.0 / usage_percent * self._safety), 1)
        self.capacity = max(self.capacity or 0, size)
        self._trim()

    def _keys(self, ids: Sequence[int]) -> list[object]:
        keys: list[object] = []
        chain = 0
        for start in range(0, len(ids) - self.block + 1, self.block):
            chain = hash((chain, tuple(ids[start:start + self.block])))
            keys.append(chain)
        return keys

    def _trim(self) -> None:
        if self.capacity is None:
            return
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

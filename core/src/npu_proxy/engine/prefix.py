"""Prompt prefixes: fingerprints of a prompt's leading blocks, and where each was served last.

Agents resend a growing conversation every turn. A device that keeps the KV cache of
what it read (prefix caching) answers the next turn by reading only the new tokens, but
only the device that read the previous turn holds that cache. The engine therefore
remembers, per model, which device served each prefix last (:class:`PrefixDirectory`),
and routing policies see, for every device, how many leading tokens of the new prompt
it served last (:attr:`~npu_proxy.engine.routing.DeviceState.prefix_tokens`).

A fingerprint is a chain of hashes, one per full block of :data:`PREFIX_BLOCK` tokens,
each covering every token up to the end of its block: two prompts share the first
``k`` fingerprints exactly when they share their first ``k`` blocks of tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence

#: Tokens per fingerprinted block.
PREFIX_BLOCK = 64
#: Blocks fingerprinted at most (the first 32k tokens): enough to tell conversations
#: apart and to find the longest shared prefix of any realistic agent prompt.
MAX_PREFIX_BLOCKS = 512


def fingerprint(tokens: Sequence[Hashable], block: int = PREFIX_BLOCK) -> tuple[int, ...]:
    """One hash per full block of ``tokens``, each chained to the ones before it.

    ``tokens`` are token ids (or any stable units a backend counts in); a trailing
    partial block is left out. Hashes are stable across processes (BLAKE2 of the
    tokens' ``repr``), so two servers fingerprint the same prompt the same way.
    """
    hashes: list[int] = []
    chain = b""
    for start in range(0, min(len(tokens), block * MAX_PREFIX_BLOCKS) - block + 1, block):
        piece = repr(tuple(tokens[start:start + block])).encode()
        chain = hashlib.blake2b(chain + piece, digest_size=8).digest()
        hashes.append(int.from_bytes(chain, "big"))
    return tuple(hashes)


class PrefixDirectory:
    """Which devices have read each (model, prefix block); bounded, the least recently
    read blocks forgotten first (as the devices' own caches forget them).

    Only the engine writes it (after a generation that reached the device) and it is
    read on every routing decision, so both are cheap: a dictionary lookup per block.
    """

    def __init__(self, capacity: int = 65536) -> None:
        self._capacity = capacity
        self._read: OrderedDict[tuple[str, int], set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._read)

    def record(self, model: str, prefix: tuple[int, ...], device: str) -> None:
        """``device`` has just read ``prefix`` of a prompt to ``model``."""
        for block in prefix:
            key = (model, block)
            self._read.setdefault(key, set()).add(device)
            self._read.move_to_end(key)
        while len(self._read) > self._capacity:
            self._read.popitem(last=False)

    def holders(self, model: str, prefix: tuple[int, ...],
                block: int = PREFIX_BLOCK) -> dict[str, int]:
        """For each device that has read the start of ``prefix``: how many leading
        tokens of it (whole blocks) it has read."""
        held: dict[str, int] = {}
        reading: set[str] | None = None
        for index, item in enumerate(prefix):
            devices = self._read.get((model, item), set())
            reading = set(devices) if reading is None else reading & devices
            if not reading:
                break
            for device in reading:
                held[device] = (index + 1) * block
        return held

    def forget(self, model: str, device: str) -> None:
        """``model`` left ``device`` (unloaded): its cache there is gone."""
        for key in [k for k in self._read if k[0] == model]:
            devices = self._read[key]
            devices.discard(device)
            if not devices:
                del self._read[key]

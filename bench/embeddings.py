"""Embeddings through the server: one text per request against 32 per request; cache hits.

The real server (``npu-proxy serve`` in a subprocess) embeds with the bundled
``all-minilm:latest`` through Ollama's ``/api/embed``. Each round, in one run:

- ``single``: ``--texts`` distinct texts, one ``/api/embed`` request each, one after
  another; ``batched``: as many other distinct texts, ``--batch`` per request. The two
  alternate which goes first. Every text is new to the server, so neither side is
  helped by the embedding cache. Throughput is texts per second of wall time.
- cache: ``--texts`` new texts, each sent twice in a row (one text per request): the
  first request is a miss (the model runs), the second a hit (the LRU cache of
  ``NPU_PROXY_EMBEDDING_CACHE_SIZE`` answers). Latency is the client's round trip.

Run: ``uv run python bench/embeddings.py [--rounds 3] [--texts 64] [--batch 32]``
Reports the ratio batched/single texts/s and miss/hit latency (no fixed target).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

import httpx
from benchlib import EMBEDDING, ServerProcess, default_store, machine, percentile, table

_WORDS = (
    "river mountain quiet engine garden silver market letter morning harbour window "
    "teacher bridge signal forest kitchen planet winter yellow journey library number "
    "station music paper stone summer village doctor evening machine ocean story"
).split()
_serial = itertools.count()


def new_texts(count: int, rng: random.Random) -> list[str]:
    """``count`` sentences never sent before in this run (so never cached)."""
    return [f"Note {next(_serial)}: " + " ".join(rng.choices(_WORDS, k=rng.randint(10, 20)))
            for _ in range(count)]


def embed(client: httpx.Client, url: str, texts: list[str]) -> float:
    """One ``/api/embed`` request; returns its round-trip seconds."""
    started = time.perf_counter()
    response = client.post(url + "/api/embed", json={"model": EMBEDDING, "input": texts})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"/api/embed answered {response.status_code}: {response.text[:300]}")
    vectors = response.json()["embeddings"]
    if len(vectors) != len(texts):
        raise RuntimeError(f"{len(texts)} texts gave {len(vectors)} embeddings")
    return elapsed


def throughput(client: httpx.Client, url: str, texts: list[str], per_request: int) -> float:
    """Texts per second embedding ``texts`` in requests of ``per_request`` texts."""
    started = time.perf_counter()
    for i in range(0, len(texts), per_request):
        embed(client, url, texts[i:i + per_request])
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=64, help="texts per side per round")
    parser.add_argument("--batch", type=int, default=32, help="texts per batched request")
    parser.add_argument("--cache-size", type=int, default=10000,
                        help="NPU_PROXY_EMBEDDING_CACHE_SIZE for the server")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="model store (default: $NPU_PROXY_BENCH_STORE or "
                             "~/.cache/npu-proxy/bench-models)")
    args = parser.parse_args()
    store = args.model_path or default_store()
    rng = random.Random(9)
    print(machine())

    rates: dict[str, list[float]] = {"single": [], "batched": []}
    miss: list[float] = []
    hit: list[float] = []
    env = {"NPU_PROXY_EMBEDDING_CACHE_SIZE": str(args.cache_size)}
    with ServerProcess(store, env=env) as server, httpx.Client(timeout=600) as client:
        server.wait_healthy("ok")
        # Load (and on a fresh store convert) the model, and warm both request shapes.
        embed(client, server.url, new_texts(1, rng))
        embed(client, server.url, new_texts(args.batch, rng))
        for round_ in range(args.rounds):
            order = ("single", "batched") if round_ % 2 == 0 else ("batched", "single")
            for side in order:
                size = 1 if side == "single" else args.batch
                rates[side].append(throughput(client, server.url,
                                              new_texts(args.texts, rng), size))
            for text in new_texts(args.texts, rng):
                miss.append(embed(client, server.url, [text]))
                hit.append(embed(client, server.url, [text]))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    single = statistics.median(rates["single"])
    batched = statistics.median(rates["batched"])
    print(f"\n{args.rounds} rounds of {args.texts} new texts per side (10-20 words each); "
          f"texts/s: median over rounds; latency: over all {len(miss)} requests")
    print(table(("side", "texts/s", "texts per request"),
                [("single", f"{single:.1f}", 1), ("batched", f"{batched:.1f}", args.batch)]))
    print()
    print(table(("one text", "p50 ms", "p99 ms"),
                [("cache miss", f"{percentile(miss, 50) * 1e3:.2f}",
                  f"{percentile(miss, 99) * 1e3:.2f}"),
                 ("cache hit", f"{percentile(hit, 50) * 1e3:.2f}",
                  f"{percentile(hit, 99) * 1e3:.2f}")]))
    print(f"\nbatched/single texts/s: {batched / single:.2f}")
    print(f"miss/hit p50 latency: {percentile(miss, 50) / percentile(hit, 50):.2f}")


if __name__ == "__main__":
    main()

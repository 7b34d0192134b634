"""The cost of the hop: the same streams direct to an npu-proxy and through a front one.

Starts an upstream ``npu-proxy serve`` (the real CPU backend, SmolLM2) and a front
``npu-proxy serve`` whose only device is that upstream (``NPU_PROXY_UPSTREAMS``, the
plugins ``ollama,openai,upstream``), then alternates, round by round, the same greedy
``/api/chat`` streams sent direct and through the front (the side that goes first
alternates too):

- one stream at a time: first-token time and decode rate, medians;
- four streams at once: aggregate tokens per second, median.

Targets: first-token overhead of the hop at most 5 ms at the median, decode at least
0.97 of direct, four streams at least 0.95 of direct. A missed target prints MISSED.

    uv run python bench/upstream.py --rounds 5 --tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import (
    LLM,
    PROMPTS,
    ServerProcess,
    StreamResult,
    default_store,
    machine,
    stream_chat,
    table,
)


async def one_stream(url: str, prompt: str, tokens: int) -> StreamResult:
    async with httpx.AsyncClient(timeout=300) as client:
        return await stream_chat(client, url, prompt, tokens)


async def four_streams(url: str, tokens: int, round_: int) -> float:
    """Aggregate tokens per second of four concurrent streams."""
    async with httpx.AsyncClient(timeout=300) as client:
        began = time.perf_counter()
        results = await asyncio.gather(*(
            stream_chat(client, url, PROMPTS[(round_ + i) % len(PROMPTS)], tokens, began)
            for i in range(4)))
    span = max(r.end for r in results) - began
    return sum(r.tokens for r in results) / span


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def run(args: argparse.Namespace) -> int:
    store = Path(args.model_path) if args.model_path else default_store()
    with ServerProcess(store) as upstream:
        upstream.wait_healthy()
        with tempfile.TemporaryDirectory() as front_store, ServerProcess(Path(front_store), {
                "NPU_PROXY_PLUGINS": "ollama,openai,upstream",
                "NPU_PROXY_UPSTREAMS": f"up={upstream.url}/v1"}) as front:
            front.wait_healthy()
            sides = {"direct": upstream.url, "front": front.url}
            # Load the model and let the front discover it before anything is timed.
            await one_stream(upstream.url, PROMPTS[0], 8)
            await one_stream(front.url, PROMPTS[0], 8)
            single: dict[str, list[StreamResult]] = {"direct": [], "front": []}
            parallel: dict[str, list[float]] = {"direct": [], "front": []}
            for round_ in range(args.rounds):
                order = ["direct", "front"] if round_ % 2 == 0 else ["front", "direct"]
                prompt = PROMPTS[round_ % len(PROMPTS)]
                for side in order:
                    single[side].append(await one_stream(sides[side], prompt, args.tokens))
                for side in order:
                    parallel[side].append(await four_streams(sides[side], args.tokens, round_))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    def ttft(side: str) -> float:
        return statistics.median(r.ttft for r in single[side])

    def decode(side: str) -> float:
        return statistics.median(r.decode_rate for r in single[side])

    def aggregate(side: str) -> float:
        return statistics.median(parallel[side])

    rows = [(side, f"{ttft(side) * 1000:.1f}", f"{decode(side):.1f}", f"{aggregate(side):.1f}")
            for side in ("direct", "front")]
    print(f"{machine()}; {LLM}; {args.rounds} rounds, {args.tokens} tokens, greedy")
    print(table(["side", "TTFT ms (median)", "decode tok/s (median)",
                 "4 streams tok/s (median)"], rows))
    overhead = (ttft("front") - ttft("direct")) * 1000
    decode_ratio = decode("front") / decode("direct")
    parallel_ratio = aggregate("front") / aggregate("direct")
    print(f"first-token overhead of the hop: {overhead:+.1f} ms "
          f"(target <= 5 ms) {verdict(overhead <= 5)}")
    print(f"decode, front / direct: {decode_ratio:.3f} (target >= 0.97) "
          f"{verdict(decode_ratio >= 0.97)}")
    print(f"4 streams, front / direct: {parallel_ratio:.3f} (target >= 0.95) "
          f"{verdict(parallel_ratio >= 0.95)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model-path", help="the upstream's model store "
                        "(default $NPU_PROXY_BENCH_STORE or ~/.cache/npu-proxy/bench-models)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

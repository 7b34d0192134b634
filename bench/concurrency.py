"""Concurrent streams through the server against OpenVINO GenAI directly (CPU, SmolLM2).

For each stream count N (distinct prompts, greedy, ``--tokens`` at most) three sides
serve the same N requests that all arrive at one instant, in one run, rotating which
side goes first each time:

- ``server``: the real server (``npu-proxy serve`` in a subprocess, the
  model store in ``--model-path``), N concurrent ``/api/chat`` streams over httpx;
- ``direct CB``: ``openvino_genai.ContinuousBatchingPipeline`` (default
  ``SchedulerConfig``) on the IR folder the server itself loads, the N requests added
  at once and stepped together;
- ``one-at-a-time``: ``openvino_genai.LLMPipeline`` on the same IR, the N requests one
  after another (what a server without batching does).

Each direct pipeline lives in a worker process of its own, as the server's does, so no
side shares a process (thread pools, allocator, caches) with another.

Per side: aggregate tokens/s (all tokens / time until the last stream ended), per-stream
tokens/s (median over streams of the decode rate after the first piece), and the median
and slowest time to first token (from the common arrival instant). Medians over rounds.
Token counts are the server's ``eval_count`` and GenAI's own counts.

With 1 among the stream counts it also compares a lone stream with ``LLMPipeline``
round by round (the two ran back to back, so a slow spell of a shared machine touches
both): the median and quartiles of the per-round decode ratio and TTFT difference.

Run: ``uv run python bench/concurrency.py [--streams 1,2,4,8] [--tokens 128] [--rounds 3]``
Targets (4 streams): server/direct-CB aggregate >= 0.93; server/one-at-a-time >= 2;
slowest TTFT < 0.5 s. A lone stream: decode >= 0.97 of ``LLMPipeline``, first token at
most 5 ms later (``--streams 1 --rounds 30`` resolves a percent on a noisy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import statistics
import time
from collections import defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import openvino_genai
from benchlib import (
    LLM,
    PROMPTS,
    ServerProcess,
    StreamResult,
    default_store,
    machine,
    percentile,
    stream_chat,
    table,
)
from npu_proxy_openvino.models import ModelPreparer, embedded_models

SIDES = ("server", "direct CB", "one-at-a-time")
_request_ids = itertools.count()


def greedy_config(pipe: Any, tokens: int) -> Any:
    """The model's own generation config, greedy, prompt already rendered."""
    config = pipe.get_generation_config() if hasattr(pipe, "get_generation_config") \
        else pipe.get_config()
    config.max_new_tokens = tokens
    config.do_sample = False
    config.apply_chat_template = False
    return config


def run_batched(pipe: Any, prompts: list[str], tokens: int) -> list[StreamResult]:
    """All ``prompts`` added to the continuous-batching pipeline at once, stepped together."""
    config = greedy_config(pipe, tokens)
    sent = time.perf_counter()
    handles = [pipe.add_request(next(_request_ids), prompt, config) for prompt in prompts]
    first = [0.0] * len(prompts)
    end = [0.0] * len(prompts)
    counts = [0] * len(prompts)
    running = openvino_genai.GenerationStatus.RUNNING
    while pipe.has_non_finished_requests():
        pipe.step()
        now = time.perf_counter()
        for i, handle in enumerate(handles):
            if handle.can_read():
                new = sum(len(out.generated_ids) for out in handle.read().values())
                if new and not first[i]:
                    first[i] = now
                counts[i] += new
            if not end[i] and handle.get_status() != running:
                end[i] = now
    done = time.perf_counter()
    return [StreamResult(sent, f or done, e or done, n)
            for f, e, n in zip(first, end, counts, strict=True)]


def run_one_at_a_time(pipe: Any, prompts: list[str], tokens: int) -> list[StreamResult]:
    """The same requests through ``LLMPipeline``, each waiting for the previous one."""
    config = greedy_config(pipe, tokens)
    sent = time.perf_counter()
    results = []
    for prompt in prompts:
        first = 0.0

        def streamer(piece: str) -> openvino_genai.StreamingStatus:
            nonlocal first
            if not first:
                first = time.perf_counter()
            return openvino_genai.StreamingStatus.RUNNING

        output = pipe.generate([prompt], config, streamer)
        end = time.perf_counter()
        generated = int(output.perf_metrics.get_num_generated_tokens())
        results.append(StreamResult(sent, first or end, end, generated))
    return results


def _worker_main(kind: str, folder: str, conn: Connection) -> None:
    """A direct baseline's process: build its pipeline, then run each N-stream request."""
    if kind == "direct CB":
        pipe = openvino_genai.ContinuousBatchingPipeline(
            folder, openvino_genai.SchedulerConfig(), "CPU")
        run = run_batched
    else:
        pipe = openvino_genai.LLMPipeline(folder, "CPU")
        run = run_one_at_a_time
    conn.send("ready")
    while (job := conn.recv()) is not None:
        prompts, tokens = job
        conn.send(run(pipe, prompts, tokens))


class DirectWorker:
    """A direct baseline (``"direct CB"`` or ``"one-at-a-time"``) in its own process."""

    def __init__(self, kind: str, folder: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker_main, args=(kind, str(folder), child),
                                         daemon=True)

    def __enter__(self) -> DirectWorker:
        self._process.start()
        if self._conn.recv() != "ready":
            raise RuntimeError("a baseline worker failed to start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()

    def run(self, prompts: list[str], tokens: int) -> list[StreamResult]:
        """Serve ``prompts`` in the worker; timings are taken there."""
        self._conn.send((prompts, tokens))
        results: list[StreamResult] = self._conn.recv()
        return results


async def run_server(client: httpx.AsyncClient, url: str, prompts: list[str],
                     tokens: int) -> list[StreamResult]:
    """``len(prompts)`` concurrent ``/api/chat`` streams, all issued at one instant."""
    sent = time.perf_counter()
    return list(await asyncio.gather(
        *(stream_chat(client, url, prompt, tokens, sent=sent) for prompt in prompts)))


def summarise(run: list[StreamResult]) -> dict[str, float]:
    """Aggregate and per-stream figures of one run of N streams."""
    sent = run[0].sent
    last = max(r.end for r in run)
    ttfts = [r.ttft for r in run]
    return {
        "aggregate": sum(r.tokens for r in run) / (last - sent),
        "per_stream": statistics.median(r.decode_rate for r in run),
        "ttft_median": statistics.median(ttfts),
        "ttft_slowest": max(ttfts),
        "tokens": float(sum(r.tokens for r in run)),
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def lone_stream(server: list[dict[str, float]], direct: list[dict[str, float]]) -> str:
    """The per-round comparison of a lone stream with ``LLMPipeline`` and its targets."""
    decode = [s["per_stream"] / d["per_stream"] for s, d in zip(server, direct, strict=True)]
    later = [1000 * (s["ttft_median"] - d["ttft_median"])
             for s, d in zip(server, direct, strict=True)]

    def spread(values: list[float], digits: int) -> str:
        return (f"{statistics.median(values):.{digits}f} "
                f"[{percentile(values, 25):.{digits}f} .. {percentile(values, 75):.{digits}f}]")

    ratio, delay = statistics.median(decode), statistics.median(later)
    return "\n".join((
        f"lone stream, server against LLMPipeline, per round (median [quartiles] of "
        f"{len(decode)}):",
        f"  decode ratio {spread(decode, 3)} (target >= 0.97): "
        f"{'ok' if ratio >= 0.97 else 'MISSED'}",
        f"  first token later by ms {spread(later, 1)} (target <= 5): "
        f"{'ok' if delay <= 5 else 'MISSED'}",
    ))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", default="1,2,4,8",
                        help="comma-separated stream counts, each 1 to 8 (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-path", type=Path, default=None,
                        help="model store shared by the server and the direct pipelines "
                             "(default: $NPU_PROXY_BENCH_STORE or ~/.cache/npu-proxy/"
                             "bench-models)")
    args = parser.parse_args()
    counts = [int(part) for part in args.streams.split(",") if part.strip()]
    if not counts or max(counts) > len(PROMPTS) or min(counts) < 1:
        parser.error(f"stream counts must be between 1 and {len(PROMPTS)}")
    store = args.model_path or default_store()
    print(machine())

    model = next(m for m in embedded_models(store) if m.name == LLM)
    folder = ModelPreparer(store).prepare(model)  # the IR folder the server loads too
    tokenizer = openvino_genai.Tokenizer(str(folder))
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                              add_generation_prompt=True)
                for text in PROMPTS]

    results: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    with (DirectWorker("direct CB", folder) as batched,
          DirectWorker("one-at-a-time", folder) as single,
          ServerProcess(store) as server):
        server.wait_healthy("ok")
        async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
            cpu = (await client.get(server.url + "/health")).json()["devices"].get("CPU", {})
            print(f"server: CPU serves up to {cpu.get('max_parallel', '?')} generation(s) "
                  "at once (/health max_parallel)")
            # Warm every side once: model load and first-call allocations are not
            # what this measures.
            await run_server(client, server.url, list(PROMPTS[:2]), 8)
            await asyncio.to_thread(batched.run, rendered[:2], 8)
            await asyncio.to_thread(single.run, rendered[:1], 8)

            async def run_side(side: str, n: int) -> list[StreamResult]:
                if side == "server":
                    return await run_server(client, server.url, list(PROMPTS[:n]),
                                            args.tokens)
                if side == "direct CB":
                    return await asyncio.to_thread(batched.run, rendered[:n], args.tokens)
                return await asyncio.to_thread(single.run, rendered[:n], args.tokens)

            turn = 0
            for round_ in range(args.rounds):
                for n in counts:
                    order = SIDES[turn % 3:] + SIDES[:turn % 3]
                    turn += 1
                    for side in order:
                        outcome = await run_side(side, n)
                        results[(side, n)].append(summarise(outcome))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    print(f"\n{args.rounds} rounds, up to {args.tokens} tokens per stream, greedy, "
          f"distinct prompts; medians over rounds")
    rows = []
    for n in counts:
        for side in SIDES:
            runs = results[(side, n)]
            rows.append((n, side, f"{median_of(runs, 'aggregate'):.1f}",
                         f"{median_of(runs, 'per_stream'):.1f}",
                         f"{median_of(runs, 'ttft_median'):.3f}",
                         f"{median_of(runs, 'ttft_slowest'):.3f}",
                         f"{median_of(runs, 'tokens'):.0f}"))
    print(table(("streams", "side", "aggregate tok/s", "per-stream tok/s",
                 "TTFT median s", "TTFT slowest s", "tokens"), rows, left=2))

    print()
    ratio_rows = []
    for n in counts:
        server = median_of(results[("server", n)], "aggregate")
        ratio_rows.append((n, f"{server / median_of(results[('direct CB', n)], 'aggregate'):.3f}",
                           f"{server / median_of(results[('one-at-a-time', n)], 'aggregate'):.3f}"))
    print(table(("streams", "server/direct-CB", "server/one-at-a-time"), ratio_rows))
    if 1 in counts:
        print()
        print(lone_stream(results[("server", 1)], results[("one-at-a-time", 1)]))
    if 4 in counts:
        cb = median_of(results[("server", 4)], "aggregate") / median_of(
            results[("direct CB", 4)], "aggregate")
        oat = median_of(results[("server", 4)], "aggregate") / median_of(
            results[("one-at-a-time", 4)], "aggregate")
        slowest = median_of(results[("server", 4)], "ttft_slowest")
        print(f"4 streams: server/direct-CB {cb:.3f} (target >= 0.93): "
              f"{'ok' if cb >= 0.93 else 'MISSED'}")
        print(f"4 streams: server/one-at-a-time {oat:.3f} (target >= 2): "
              f"{'ok' if oat >= 2 else 'MISSED'}")
        print(f"4 streams: server slowest TTFT {slowest:.3f} s (target < 0.5 s): "
              f"{'ok' if slowest < 0.5 else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())

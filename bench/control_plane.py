"""Control-plane latency: ``/health`` and ``/api/tags`` while idle, under load, during a load.

The real server (``npu-proxy serve`` in a subprocess). One sampler sends
``/health`` and ``/api/tags`` alternately, one request at a time, and records each
round trip, in three conditions that rotate within every round:

- ``idle``: nothing else runs (the baseline);
- ``4 streams``: four ``/api/chat`` streams of ``smollm2:135m`` run the whole time
  (each starts again when it ends), driven by a separate process so the sampler never
  waits for the load's Python code;
- ``model loading``: the LLM is unloaded (Ollama's ``keep_alive: 0``), then loaded
  again (an empty ``/api/generate`` with ``keep_alive: -1``); only samples taken while
  that load request is outstanding count, and loads repeat until enough are taken.

Each condition collects ``--requests`` samples per endpoint in total (split over the
rounds). p50/p99 by nearest rank; the ratio is each condition's p99 over idle's.

Run: ``uv run python bench/control_plane.py [--requests 300] [--rounds 3]``
Target: ``/health`` p99 < 10 ms while 4 streams run and while a model loads.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from benchlib import (
    LLM,
    PROMPTS,
    ServerProcess,
    default_store,
    machine,
    percentile,
    stream_chat,
    table,
)

ENDPOINTS = ("/health", "/api/tags")
CONDITIONS = ("idle", "4 streams", "model loading")
#: Pause between samples, so the sampler itself is not the load.
PAUSE = 0.005

Samples = dict[str, list[float]]


def sample_once(client: httpx.Client, url: str, samples: Samples,
                statuses: Counter[str]) -> None:
    """One request to each endpoint, latencies appended to ``samples``.

    ``statuses`` counts what ``/health`` said: its status and how many generations were
    running or queued (summed over devices), e.g. ``"ok, 4 active"``.
    """
    for endpoint in ENDPOINTS:
        started = time.perf_counter()
        response = client.get(url + endpoint)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered {response.status_code}")
        if endpoint == "/health":
            report = response.json()
            active = sum(d.get("in_flight", 0) + d.get("queue_depth", 0)
                         for d in report.get("devices", {}).values())
            statuses[f"{report.get('status', '?')}, {active} active"] += 1
        samples[endpoint].append(elapsed)
        time.sleep(PAUSE)


async def _keep_streaming(url: str, streams: int, tokens: int, stop: Any) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:

        async def worker(index: int) -> None:
            while not stop.is_set():
                await stream_chat(client, url, PROMPTS[index], tokens)

        await asyncio.gather(*(worker(i) for i in range(streams)))


def _stream_load_main(url: str, streams: int, tokens: int, stop: Any, ready: Any) -> None:
    """The load process: ``streams`` chat streams, each restarted when it ends."""
    ready.set()
    asyncio.run(_keep_streaming(url, streams, tokens, stop))


class StreamLoad:
    """Four greedy chat streams kept running by a separate process until stopped.

    A process, not a thread: the sampler must not wait for the GIL while the load's
    stream parsing holds it, or the client, not the server, would show in the figures.
    """

    def __init__(self, url: str, streams: int = 4, tokens: int = 128) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ready = context.Event()
        self._process = context.Process(
            target=_stream_load_main, args=(url, streams, tokens, self._stop, self._ready),
            daemon=True)

    def __enter__(self) -> StreamLoad:
        self._process.start()
        if not self._ready.wait(timeout=120):
            raise RuntimeError("the stream load process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # each stream finishes the generation it is in, then stops
        self._process.join(timeout=120)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        elif self._process.exitcode != 0:
            raise RuntimeError(f"the stream load process failed ({self._process.exitcode})")


def idle(client: httpx.Client, url: str, count: int, samples: Samples,
         statuses: Counter[str]) -> None:
    """``count`` samples per endpoint with nothing else running."""
    for _ in range(count):
        sample_once(client, url, samples, statuses)


def under_streams(client: httpx.Client, url: str, count: int, samples: Samples,
                  statuses: Counter[str]) -> None:
    """``count`` samples per endpoint while four streams run."""
    with StreamLoad(url):
        # Give the process time to connect and every stream time to be admitted.
        time.sleep(2.0)
        for _ in range(count):
            sample_once(client, url, samples, statuses)


def load_llm(url: str, outcome: list[httpx.Response | BaseException]) -> None:
    """Load the LLM (an empty ``/api/generate``); the response or error goes to ``outcome``."""
    try:
        with httpx.Client(timeout=600) as client:
            outcome.append(client.post(url + "/api/generate",
                                       json={"model": LLM, "keep_alive": -1}))
    except BaseException as exc:  # re-raised by the caller, in the main thread
        outcome.append(exc)


def during_loads(client: httpx.Client, url: str, count: int, samples: Samples,
                 statuses: Counter[str]) -> None:
    """``count`` samples per endpoint taken while the LLM is being loaded."""
    taken = 0
    while taken < count:
        response = client.post(url + "/api/generate", json={"model": LLM, "keep_alive": 0})
        response.raise_for_status()
        outcome: list[httpx.Response | BaseException] = []
        loader = threading.Thread(target=load_llm, args=(url, outcome), daemon=True)
        loader.start()
        while loader.is_alive() and taken < count:
            batch: Samples = defaultdict(list)
            sample_once(client, url, batch, statuses)
            if loader.is_alive():  # the load was still running when both answered
                for endpoint, values in batch.items():
                    samples[endpoint].extend(values)
                taken += 1
        loader.join()
        if isinstance(outcome[0], BaseException):
            raise RuntimeError(f"loading {LLM} failed: {outcome[0]}")
        outcome[0].raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="samples per endpoint per condition")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-path", type=Path, default=None,
                        help="model store (default: $NPU_PROXY_BENCH_STORE or "
                             "~/.cache/npu-proxy/bench-models)")
    args = parser.parse_args()
    store = args.model_path or default_store()
    per_round = max(1, args.requests // args.rounds)
    print(machine())

    runners: dict[str, Callable[..., None]] = {
        "idle": idle, "4 streams": under_streams, "model loading": during_loads}
    samples: dict[str, Samples] = {c: defaultdict(list) for c in CONDITIONS}
    statuses: dict[str, Counter[str]] = {c: Counter() for c in CONDITIONS}
    with ServerProcess(store) as server, httpx.Client(timeout=60) as client:
        server.wait_healthy("ok")
        # Load the LLM once (converting it on a fresh store) and warm the connection.
        client.post(server.url + "/api/generate",
                    json={"model": LLM, "keep_alive": -1}, timeout=600).raise_for_status()
        idle(client, server.url, 10, defaultdict(list), Counter())
        for round_ in range(args.rounds):
            shift = round_ % len(CONDITIONS)
            for condition in CONDITIONS[shift:] + CONDITIONS[:shift]:
                runners[condition](client, server.url, per_round, samples[condition],
                                   statuses[condition])
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    print(f"\n{args.rounds} rounds, {per_round * args.rounds} sequential samples per "
          f"endpoint and condition, {PAUSE * 1e3:.0f} ms apart; milliseconds")
    rows = []
    for condition in CONDITIONS:
        for endpoint in ENDPOINTS:
            values = samples[condition][endpoint]
            rows.append((condition, endpoint, len(values),
                         f"{percentile(values, 50) * 1e3:.2f}",
                         f"{percentile(values, 99) * 1e3:.2f}",
                         f"{max(values) * 1e3:.2f}"))
    print(table(("condition", "endpoint", "n", "p50", "p99", "max"), rows, left=2))
    print()
    for condition in CONDITIONS[1:]:
        seen = ", ".join(f"{status} {n}" for status, n in statuses[condition].most_common())
        print(f"/health status while {condition}: {seen}")
    base = percentile(samples["idle"]["/health"], 99)
    for condition in CONDITIONS[1:]:
        p99 = percentile(samples[condition]["/health"], 99)
        tags = percentile(samples[condition]["/api/tags"], 99) / percentile(
            samples["idle"]["/api/tags"], 99)
        print(f"{condition}: /health p99 {p99 * 1e3:.2f} ms, {p99 / base:.2f}x idle "
              f"(/api/tags p99 {tags:.2f}x idle); target < 10 ms: "
              f"{'ok' if p99 < 0.010 else 'MISSED'}")


if __name__ == "__main__":
    main()

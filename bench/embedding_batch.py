"""``/health`` while a full embedding batch (2,048 inputs, NPU_PROXY_MAX_EMBEDDING_INPUTS)
is embedded and its vectors are encoded.

The server runs as ``npu-proxy serve`` in a subprocess; the batch is sent from a
separate process, so the sampler never waits for the sender's Python code. For each
route (``/v1/embeddings`` as floats and as base64, Ollama's ``/api/embed``) and each
round, the sampler takes ``/health`` round trips one at a time while nothing else runs
(``idle``, the baseline) and then for as long as the batch is outstanding. p50, p99 and
the worst by nearest rank; the ratio is the batch's worst over idle's worst.

``--mock`` serves the simulated backend (NPU_PROXY_REAL_INFERENCE=0, its ``mock-embed``
model): what remains is the server's own work (parsing, building and encoding about
16 MB of JSON). Without it the real all-MiniLM model embeds on the CPU.

Run: ``uv run python bench/embedding_batch.py [--rounds 3] [--inputs 2048] [--mock]``
Target: the worst ``/health`` round trip under 100 ms while the batch runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import EMBEDDING, ServerProcess, default_store, machine, percentile, table

TARGET = 0.100
#: Pause between samples, so the sampler itself is not the load.
PAUSE = 0.002


def send(url: str, route: str, body: dict[str, Any], done: Any) -> None:
    """The batch, from another process; ``done`` is set when the answer is read."""
    answer = httpx.post(url + route, json=body, timeout=600)
    answer.raise_for_status()
    done.set()


def sample(client: httpx.Client, url: str, until: Any, least: int = 50) -> list[float]:
    """``/health`` round trips until ``until()`` is true (at least ``least`` of them)."""
    times: list[float] = []
    while not until() or len(times) < least:
        started = time.perf_counter()
        client.get(url + "/health").raise_for_status()
        times.append(time.perf_counter() - started)
        time.sleep(PAUSE)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=2048)
    parser.add_argument("--mock", action="store_true", help="the simulated backend")
    parser.add_argument("--model-path", type=Path, default=default_store())
    args = parser.parse_args()
    model = "mock-embed:latest" if args.mock else EMBEDDING
    env = {"NPU_PROXY_REAL_INFERENCE": "0"} if args.mock else {}
    texts = [f"input number {i} with a few more words" for i in range(args.inputs)]
    routes = {
        "/v1/embeddings float": ("/v1/embeddings", {"model": model, "input": texts}),
        "/v1/embeddings base64": ("/v1/embeddings", {"model": model, "input": texts,
                                                     "encoding_format": "base64"}),
        "/api/embed": ("/api/embed", {"model": model, "input": texts}),
    }
    idle: list[float] = []
    busy: dict[str, list[float]] = {name: [] for name in routes}
    took: dict[str, list[float]] = {name: [] for name in routes}
    with ServerProcess(args.model_path, env) as server:
        server.wait_healthy()
        with httpx.Client(timeout=60) as client:
            client.post(server.url + "/api/embed", json={"model": model, "input": "load"},
                        timeout=600).raise_for_status()
            for _ in range(args.rounds):
                for name, (route, body) in routes.items():
                    idle += sample(client, server.url, lambda: True)
                    done = multiprocessing.Event()
                    sender = multiprocessing.Process(
                        target=send, args=(server.url, route, body, done))
                    started = time.perf_counter()
                    sender.start()
                    busy[name] += sample(client, server.url, done.is_set, least=1)
                    took[name].append(time.perf_counter() - started)
                    sender.join()
                    if sender.exitcode != 0:
                        raise RuntimeError(f"the {name} batch failed")
    print(f"{machine()}; {args.inputs} inputs of {model}, {args.rounds} rounds")
    rows = [("idle", len(idle), "-", *(f"{percentile(idle, q) * 1000:.1f}" for q in (50, 99)),
             f"{max(idle) * 1000:.1f}", "1.0", "")]
    for name, times in busy.items():
        worst = max(times)
        rows.append((name, len(times), f"{min(took[name]):.2f}",
                     *(f"{percentile(times, q) * 1000:.1f}" for q in (50, 99)),
                     f"{worst * 1000:.1f}", f"{worst / max(idle):.1f}",
                     "" if worst < TARGET else "MISSED"))
    print(table(("/health while", "samples", "batch s (best)", "p50 ms", "p99 ms", "worst ms",
                 "worst / idle", f"< {TARGET * 1000:.0f} ms"), rows))


if __name__ == "__main__":
    main()

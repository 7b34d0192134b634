"""Server start-up: process start to a healthy answer and to the embedded model's first token.

Each round, three processes start from nothing, timed from the instant each is spawned:

- ``cold``: ``npu-proxy serve`` on a fresh, empty model store, so the first
  request pays the one-time GGUF -> OpenVINO IR conversion and the load;
- ``second``: the same command again on the store the cold start just filled (the IR
  is reused, as on every start after the first);
- ``bare GenAI``: a plain Python process that imports ``openvino_genai``, loads
  ``LLMPipeline`` from that same IR folder and prints when the first token streams
  (the floor: what any server built on GenAI pays before it can answer);
- ``bare uvicorn``: a plain Python process serving a one-route ASGI app with uvicorn,
  timed to its first 200 (the floor for any Python HTTP server's ``/health``).

Server columns: ``/health`` first answers 200 (the listener is up; the server says
``"starting"`` while its plugins are composed); ``/health`` says ``"ok"`` (devices
probed, nothing loading), polled alongside the request; the first streamed piece of a
greedy ``/api/chat`` request for ``smollm2:135m`` sent as soon as ``/health`` first
answered (no warm-up: the model loads on that first request, which waits for the
composition). Medians over rounds.

With ``--warmup`` the servers start with ``NPU_PROXY_WARMUP=1`` (the model loads at
startup instead of on the first request).

Run: ``uv run python bench/startup.py [--rounds 3] [--warmup]``
Targets: /health within 1 s of the start; second start to first token < 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import LLM, PROMPTS, ServerProcess, free_port, machine, stream_chat, table
from npu_proxy_openvino.models import ModelPreparer, embedded_models

#: The bare-GenAI child: load the IR, stream one greedy generation, say when the first
#: piece arrived. It prints "first" on its own line; the parent timestamps that line.
_BARE_CHILD = """
import sys
import openvino_genai
pipe = openvino_genai.LLMPipeline(sys.argv[1], "CPU")
config = pipe.get_generation_config()
config.max_new_tokens = 8
config.do_sample = False
seen = []
def streamer(piece):
    if not seen:
        seen.append(piece)
        print("first", flush=True)
    return openvino_genai.StreamingStatus.RUNNING
pipe.generate(sys.argv[2], config, streamer)
"""


#: The bare-uvicorn child: a one-route ASGI app on the given port.
_BARE_HTTP_CHILD = """
import sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            lifespan="off")
"""


async def server_start(store: Path, warmup: bool) -> tuple[float, float, float]:
    """(to /health 200, to "ok", to first token) in seconds from spawning the server."""
    with ServerProcess(store, env={"NPU_PROXY_WARMUP": "1" if warmup else "0"}) as server:
        to_health = await asyncio.to_thread(server.wait_healthy, None)
        ok = asyncio.create_task(asyncio.to_thread(server.wait_healthy, "ok"))
        async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
            result = await stream_chat(client, server.url, PROMPTS[0], 8)
        if result.tokens < 1:
            raise RuntimeError("the first request generated no tokens")
        return to_health, await ok, result.first - server.started


def bare_start(folder: Path) -> float:
    """Seconds from spawning a bare GenAI process to its first streamed token."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _BARE_CHILD, str(folder), PROMPTS[0]],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    first = 0.0
    for line in child.stdout:
        if line.strip() == "first" and not first:
            first = time.perf_counter() - started
    if child.wait() != 0 or not first:
        raise RuntimeError(f"the bare GenAI process failed ({child.returncode})")
    return first


def bare_http_start() -> float:
    """Seconds from spawning a bare uvicorn process to its first 200."""
    port = free_port()
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _BARE_HTTP_CHILD, str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=5) as client:
            while child.poll() is None:
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    time.sleep(0.01)
        raise RuntimeError(f"the bare uvicorn process exited ({child.returncode})")
    finally:
        child.terminate()
        child.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", action="store_true",
                        help="start the servers with NPU_PROXY_WARMUP=1 (the default "
                             "model loads and generates 16 tokens at startup)")
    args = parser.parse_args()
    print(machine())

    rows: dict[str, list[tuple[float, float, float]]] = {"cold": [], "second": []}
    bare: list[float] = []
    bare_http: list[float] = []
    for round_ in range(args.rounds):
        store = Path(tempfile.mkdtemp(prefix="npu-proxy-bench-startup-"))
        try:
            rows["cold"].append(await server_start(store, args.warmup))
            rows["second"].append(await server_start(store, args.warmup))
            model = next(m for m in embedded_models(store) if m.name == LLM)
            folder = ModelPreparer(store).ir_dir(model)
            if folder is None:
                raise RuntimeError("the server did not keep the converted IR in the store")
            bare.append(bare_start(folder))
            bare_http.append(bare_http_start())
        finally:
            shutil.rmtree(store, ignore_errors=True)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    def med(side: str, column: int) -> float:
        return statistics.median(r[column] for r in rows[side])

    print(f"\n{args.rounds} rounds, seconds from process spawn, medians; server warm-up "
          f"{'on' if args.warmup else 'off'}")
    lines = [(side, f"{med(side, 0):.2f}", f"{med(side, 1):.2f}", f"{med(side, 2):.2f}")
             for side in ("cold", "second")]
    lines.append(("bare GenAI (IR)", "-", "-", f"{statistics.median(bare):.2f}"))
    lines.append(("bare uvicorn", f"{statistics.median(bare_http):.2f}", "-", "-"))
    print(table(("start", "/health 200", "/health ok", "first token"), lines))
    second = med("second", 2)
    print(f"\nsecond start/bare uvicorn /health 200: "
          f"{med('second', 0) / statistics.median(bare_http):.3f}")
    print(f"second start /health 200 {med('second', 0):.2f} s (target < 1 s): "
          f"{'ok' if med('second', 0) < 1 else 'MISSED'}")
    print(f"second/cold first token: {second / med('cold', 2):.3f}")
    print(f"second start/bare GenAI first token: {second / statistics.median(bare):.3f}")
    print(f"second start to first token {second:.2f} s (target < 3 s): "
          f"{'ok' if second < 3 else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())

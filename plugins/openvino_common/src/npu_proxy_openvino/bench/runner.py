"""The workloads of ``npu-proxy bench`` over its targets, with the guards.

A run first builds every prompt (the same for every target) and checks them against
each device's limits, so a prompt the NPU was not compiled for is refused before any
model is compiled. Then each target in turn: its loads (devices: a first load and a
second one after unloading, which shows what the compile cache saves), one warm-up
request, and the workloads, ``reps`` times each:

- ``gen``: for each prompt size, generation length and parallelism, ``parallel``
  chats of that size sent together (distinct prompts, greedy);
- ``agent``: a coding agent's session of ``turns`` turns on a system prompt of the
  first prompt size, the whole history resent each turn; turn 1 is cold, the later
  turns can reuse a prefix cache (their first tokens are what it saves);
- ``embed``: one request of ``texts`` new texts to the embedding model.

Results are appended to :class:`~.records.Results` as they are measured, so a run
stopped by Ctrl-C still has everything it finished.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from npu_proxy.engine.errors import EngineError

from .measure import Batch
from .prompts import Counter, Turn, conversation, sized_chat, system_prompt, texts_to_embed
from .records import EmbeddingRecord, GenerationRecord, LoadRecord, Results, Subject
from .targets import BenchError, DeviceTarget, Target

WORKLOADS = ("gen", "agent", "embed")
#: The warm-up request: a short chat, so first-call costs stay out of the figures.
WARM_UP: list[Turn] = [("user", "Say hello.")]
WARM_UP_TOKENS = 2


@dataclass(frozen=True)
class Plan:
    """What to run: sizes in tokens, parallel requests, repetitions, workloads."""

    prompts: tuple[int, ...] = (512,)
    gens: tuple[int, ...] = (128,)
    parallel: tuple[int, ...] = (1,)
    reps: int = 5
    workloads: frozenset[str] = frozenset({"gen"})
    turns: int = 4
    texts: int = 32

    def steps(self, target: Target) -> int:
        """Progress steps for ``target``: loads, warm-up, one per batch or request."""
        steps = 1
        if isinstance(target, DeviceTarget):
            steps += 2
        if "gen" in self.workloads:
            steps += len(self.prompts) * len(self.gens) * len(self.parallel) * self.reps
        if "agent" in self.workloads:
            steps += self.reps * self.turns
        if "embed" in self.workloads and target.embedding_model:
            steps += self.reps + (1 if isinstance(target, DeviceTarget) else 0)
        return steps


class Progress(Protocol):
    """Where a run reports its steps (a progress bar, or nothing)."""

    def start(self, total: int) -> None: ...

    def describe(self, label: str) -> None: ...

    def advance(self) -> None: ...


def _raise(setting: str, needed: int) -> str:
    """How to make a device take ``needed`` tokens: its setting, else another model."""
    if not setting:
        return "choose a model with a longer context"
    return f"set {setting}={needed} or more (the device compiles for it again)"


def _nonce() -> str:
    """The start of every tag: new for each request and each run, so the prompts share
    no more than the template's first tokens (a server's prefix cache may even hold an
    earlier run's prompts: llama-server keeps its slots')."""
    return secrets.token_hex(3)


class Runner:
    """Runs ``plan`` on ``targets``, appending to ``results``; ``count`` sizes prompts."""

    def __init__(self, plan: Plan, targets: Sequence[Target], count: Counter,
                 results: Results, progress: Progress) -> None:
        self.plan = plan
        self.targets = list(targets)
        self.count = count
        self.results = results
        self.progress = progress
        self._chats: dict[tuple[int, int, int, int, int], list[Turn]] = {}
        self._sessions: list[list[list[Turn]]] = []

    async def prepare(self) -> None:
        """Build every prompt and check each device can take them.

        Raises :class:`BenchError` naming the device, its limit and the setting that
        raises it, before any model is loaded.
        """
        plan = self.plan
        if "gen" in plan.workloads:
            for p in plan.prompts:
                for g in plan.gens:
                    for n in plan.parallel:
                        for r in range(plan.reps):
                            for s in range(n):
                                chat = await sized_chat(
                                    self.count, p, f"{_nonce()} {p}/{g}/{n}/{r}/{s}")
                                self._chats[(p, g, n, r, s)] = chat
                                if (n, r, s) == (plan.parallel[0], 0, 0):
                                    # checked at once: a refusal comes before more work
                                    self._check(await self.count(chat), g, f"--prompt {p}")
        if "agent" in plan.workloads:
            for r in range(plan.reps):
                system = await system_prompt(self.count, plan.prompts[0],
                                             f"{_nonce()} agent r{r}")
                self._sessions.append(list(conversation(system, plan.turns)))
                if r == 0:
                    self._check(await self.count(self._sessions[0][-1]), plan.gens[0],
                                "the agent's last turn")

    def _check(self, tokens: int, gen: int, what: str) -> None:
        for target in self.targets:
            if not isinstance(target, DeviceTarget):
                continue
            limit, context, setting = target.prompt_limit()

            if limit is not None and tokens > limit:
                raise BenchError(
                    f"{what} is {tokens} prompt tokens, more than the {limit} tokens "
                    f"{target.name} takes for {target.model} as compiled: "
                    f"{_raise(setting, tokens)}, or ask for a smaller --prompt")
            if tokens + gen > context:
                raise BenchError(
                    f"{what} with --gen {gen} needs {tokens + gen} tokens, more than the "
                    f"{context} tokens of context {target.name} has for {target.model}: "
                    f"{_raise(setting, tokens + gen)}, or ask for smaller sizes")

    async def run(self) -> None:
        """Every target in turn; a target that fails is noted and the others still run."""
        self.progress.start(sum(self.plan.steps(t) for t in self.targets))
        for target in self.targets:
            try:
                await self._run(target)
            except (BenchError, EngineError, httpx.HTTPError) as exc:
                self.results.notes.append(f"{target.name}: stopped: {exc}")
            finally:
                await target.close()

    async def _run(self, target: Target) -> None:
        plan, progress = self.plan, self.progress
        subject = Subject.of(target)
        if isinstance(target, DeviceTarget):
            loads = LoadRecord(subject)
            self.results.records.append(loads)
            for attempt in ("first", "second"):
                progress.describe(f"{target.name}: {attempt} load of {target.model}")
                if attempt == "second":
                    await target.unload()
                loads.loads.append(await target.load())
                progress.advance()
        progress.describe(f"{target.name}: warm-up")
        await target.chat(WARM_UP, WARM_UP_TOKENS)
        progress.advance()
        if "gen" in plan.workloads:
            await self._generation(target, subject)
        if "agent" in plan.workloads:
            await self._agent(target, subject)
        if "embed" in plan.workloads:
            await self._embeddings(target)

    async def _generation(self, target: Target, subject: Subject) -> None:
        plan = self.plan
        for p in plan.prompts:
            for g in plan.gens:
                for n in plan.parallel:
                    test = f"pp{p} tg{g}"
                    record = GenerationRecord(subject, "generation", test, n, p, g)
                    self.results.records.append(record)
                    for r in range(plan.reps):
                        self.progress.describe(f"{target.name}: {test} x{n} rep {r + 1}")
                        samples = await asyncio.gather(
                            *(target.chat(self._chats[(p, g, n, r, s)], g) for s in range(n)))
                        record.batches.append(Batch(tuple(samples)))
                        self.progress.advance()

    async def _agent(self, target: Target, subject: Subject) -> None:
        plan = self.plan
        gen = plan.gens[0]
        cold = GenerationRecord(subject, "agent", "agent turn 1", 1, plan.prompts[0], gen)
        warm = GenerationRecord(subject, "agent", f"agent turns 2-{plan.turns}", 1, None, gen)
        self.results.records.append(cold)
        if plan.turns > 1:
            self.results.records.append(warm)
        for r, session in enumerate(self._sessions):
            for turn, chat in enumerate(session, start=1):
                self.progress.describe(f"{target.name}: agent turn {turn} rep {r + 1}")
                sample = await target.chat(chat, gen)
                (cold if turn == 1 else warm).batches.append(Batch((sample,)))
                self.progress.advance()

    async def _embeddings(self, target: Target) -> None:
        if target.embedding_model is None:
            self.results.notes.append(f"{target.name}: embeddings skipped: no embedding model "
                                      "runs there")
            return
        subject = Subject.of(target, target.embedding_model)
        device = target if isinstance(target, DeviceTarget) else None
        if device is not None and device.embedding is not None:
            self.progress.describe(f"{target.name}: load of {target.embedding_model}")
            loads = LoadRecord(subject)
            self.results.records.append(loads)
            loads.loads.append(await device.load(device.embedding))
            self.progress.advance()
        await target.embed(["warm-up"])
        record = EmbeddingRecord(subject, self.plan.texts)
        self.results.records.append(record)
        for r in range(self.plan.reps):
            self.progress.describe(f"{target.name}: embed {self.plan.texts} rep {r + 1}")
            texts = texts_to_embed(self.plan.texts, f"{_nonce()} embed r{r}")
            record.samples.append(await target.embed(texts))
            self.progress.advance()
        if device is not None and device.embedding is not None:
            await device.unload(device.embedding)

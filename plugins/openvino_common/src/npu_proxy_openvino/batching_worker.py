"""The step loop of continuous batching: one ``ContinuousBatchingPipeline``, one stepper.

GenAI's continuous-batching pipeline takes requests with ``add_request`` (one
``GenerationHandle`` each) and advances every running request by one token per
``step()``. :func:`run_steps` is the only caller of ``add_request``/``step``/``read``
for its pipeline: it takes commands, admits requests, steps while any is active, reads
each handle's new token ids, detokenizes them incrementally
(:class:`IncrementalDetokenizer`) and hands out what happened, one list of events per
step (one hand-over per step, not per token).

The same loop runs wherever the pipeline lives (see
:mod:`~npu_proxy_openvino.batching`): in a thread of the server, or in a worker process
of its own (:func:`serve` is that process's whole program). Commands arrive through an
:class:`Inbox` (the worker's end of a pipe, or a queue) and are plain data:
``("add", id, prompt token ids, GenerationSpec)``, ``("cancel", id)``, ``("shutdown",)``.
Events: ``("text", id, piece)`` (already detokenized, never a split character),
``("end", id, Outcome)`` once GenAI has freed the sequence (finished, cancelled or
ignored) and ``("error", id, message)`` for a request the device failed.

This module is the worker process's program, so it imports little: no settings, no
engine, no web framework.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol

from .options import GenerationSpec, apply_options
from .prefix_ledger import PrefixLedger
from .runner import Outcome
from .tokens import ids_tensor

log = logging.getLogger(__name__)

#: One step's worth of events (see the module doc).
Events = list[tuple[Any, ...]]

#: ``(model folder, device, SchedulerConfig, properties) -> ContinuousBatchingPipeline``-like.
BatchingPipelineFactory = Callable[[str, str, Any, dict[str, Any]], Any]


def scheduler_config(max_parallel: int, kv_cache_gb: int, prefix_caching: bool) -> Any:
    """A ``SchedulerConfig`` for ``max_parallel`` sequences and a KV budget in GB.

    ``kv_cache_gb == 0`` lets GenAI grow the cache on demand, to the peak the running
    requests need; otherwise the cache is reserved once at that size. With
    ``prefix_caching`` a finished request's full prompt blocks stay in the cache, keyed
    by a hash of the tokens up to them: a later prompt that starts with the same tokens
    reuses them and evaluates only the rest. Cached blocks count as free: when no unused
    block is left the least recently used cached one is overwritten, so the cache never
    outgrows its budget (checked in openvino.genai's ``block_manager.hpp`` and measured:
    40 distinct prompts in a row leave a grown cache at its first size).
    ``dynamic_split_fuse`` (GenAI's default) mixes prompt chunks with decode steps, so a
    long prompt does not stall the other streams.
    """
    import openvino_genai

    config = openvino_genai.SchedulerConfig()
    config.max_num_seqs = max(max_parallel, 1)
    config.cache_size = kv_cache_gb
    config.dynamic_split_fuse = True
    config.enable_prefix_caching = prefix_caching
    return config


def single_stream_scheduler_config(kv_cache_gb: int, prefix_caching: bool) -> Any:
    """The ``scheduler_config`` property of a single-stream ``LLMPipeline`` on CPU/GPU.

    :func:`scheduler_config` for one sequence, with the whole prompt evaluated in one
    step as in GenAI's own latency-oriented default for ``LLMPipeline`` (no other
    stream waits behind it).
    """
    config = scheduler_config(1, kv_cache_gb, prefix_caching)
    config.max_num_batched_tokens = 2**64 - 1  # SIZE_MAX: no limit
    return config


def openvino_batching_pipeline(
    path: str, device: str, scheduler: Any, properties: dict[str, Any]
) -> Any:
    """The real factory: ``openvino_genai.ContinuousBatchingPipeline``."""
    import openvino_genai

    return openvino_genai.ContinuousBatchingPipeline(path, scheduler, device, properties)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a batching pipeline is built from: plain data (and a module-level factory),
    so a worker process can receive it as its argument."""

    path: str
    device: str
    max_parallel: int
    kv_cache_gb: int
    prefix_caching: bool
    properties: dict[str, Any]
    factory: BatchingPipelineFactory = openvino_batching_pipeline

    def build(self) -> Any:
        """Compile the pipeline (blocking: seconds to minutes)."""
        scheduler = scheduler_config(self.max_parallel, self.kv_cache_gb, self.prefix_caching)
        return self.factory(self.path, self.device, scheduler, self.properties)


class IncrementalDetokenizer:
    """Token ids in, text out, never splitting a multi-byte character; one decode a token.
    ``special_tokens``: the text keeps the model's special tokens.

    Decodes a window of the latest tokens and emits what the window's text adds beyond
    what was emitted of it. Text ending in U+FFFD is an incomplete UTF-8 sequence and is
    held until the next token completes it. The window restarts once it reaches
    :attr:`WINDOW` tokens, keeping :attr:`CONTEXT` tokens before the restart for context
    (tokenizers that drop a leading space need it), so a decode stays short however long
    the answer grows (one extra decode per restart).
    """

    WINDOW = 48
    CONTEXT = 4

    def __init__(self, tokenizer: Any, special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = not special_tokens
        self._ids: list[int] = []
        self._start = 0  # start of the window
        self._shown = 0  # characters of the window's text already emitted

    def feed(self, ids: list[int]) -> str:
        """The text that ``ids`` (appended to the earlier ones) completes."""
        self._ids.extend(ids)
        text = self._decode(self._ids[self._start:])
        if len(text) <= self._shown or text.endswith("\ufffd"):
            return ""
        piece = text[self._shown:]
        self._shown = len(text)
        if len(self._ids) - self._start >= self.WINDOW:
            self._start = len(self._ids) - self.CONTEXT
            self._shown = len(self._decode(self._ids[self._start:]))
        return piece

    def finish(self) -> str:
        """What is still held back (an incomplete character comes out as U+FFFD)."""
        text = self._decode(self._ids[self._start:])
        piece = text[self._shown:] if len(text) > self._shown else ""
        self._start, self._shown = len(self._ids), 0
        return piece

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self._tokenizer.decode(ids, skip_special_tokens=self._skip_special))


class Inbox(Protocol):
    """Where commands arrive: a ``multiprocessing`` connection, or a queue that reads
    like one."""

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a command is ready, waiting up to ``timeout`` s (None: for ever)."""

    def recv(self) -> Any:
        """The next command (call after :meth:`poll` said one is ready)."""


def run_steps(pipe: Any, inbox: Inbox, emit: Callable[[Events], None],
              prefix_caching: bool = False) -> None:
    """Serve ``pipe`` until a ``shutdown`` command: the one step loop of batching.

    Blocks on ``inbox`` while nothing runs; between steps it takes only the commands
    that have already arrived. On ``shutdown`` every request is cancelled and stepped
    until GenAI has freed it (each gets its ``end``), then it returns. Errors of
    ``inbox`` and ``emit`` (the other side went away) propagate. With
    ``prefix_caching`` (the pipeline was built with it) each outcome carries the prompt
    tokens the cache surely reused (:class:`~.prefix_ledger.PrefixLedger`).
    """
    stepper = _Stepper(pipe, PrefixLedger() if prefix_caching else None)
    stopping = False
    while True:
        wait: float | None = 0 if stepper.active or stopping else None
        while not stopping and inbox.poll(wait):
            stopping = not stepper.command(inbox.recv())
            wait = 0
        if stepper.active:
            stepper.step()
        events = stepper.take_events()
        if events:
            emit(events)
        if stopping and not stepper.active:
            return


def serve(conn: Connection, spec: WorkerSpec) -> None:
    """A worker process's whole life: build the pipeline, report ``ready`` (or
    ``failed``), then :func:`run_steps` over the pipe until shutdown or until the
    server's end of the pipe closes."""
    # The server owns this process's life: it sends "shutdown" as it stops, and a server
    # that is gone closes the pipe. A Ctrl-C in the terminal or a service manager's
    # SIGTERM reaches the whole process group at once; obeying it here would end the
    # streams before the server has stopped accepting and cancelled them in order.
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        pipe = spec.build()
    except Exception as exc:
        conn.send(("failed", str(exc)))
        return
    conn.send(("ready",))
    try:
        run_steps(pipe, conn, conn.send, spec.prefix_caching)
    except (EOFError, OSError):  # the server went away: nothing left to serve
        return


@dataclass(eq=False)
class _Job:
    """One admitted request's state inside the step loop."""

    id: int
    handle: Any
    detokenizer: IncrementalDetokenizer
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: Any = None
    start_ns: int = field(default_factory=time.perf_counter_ns)
    first_ns: int = 0
    cancelled: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    #: each generated token and its log-probability; None when the request did not ask
    logprobs: list[tuple[int, float]] | None = None


class _Stepper:
    """The pipeline, its admitted jobs and the events of the current step."""

    def __init__(self, pipe: Any, ledger: PrefixLedger | None = None) -> None:
        import openvino_genai

        self._pipe = pipe
        self._ledger = ledger
        self._tokenizer = pipe.get_tokenizer()
        self._running = openvino_genai.GenerationStatus.RUNNING
        self._ignored = openvino_genai.GenerationStatus.IGNORED
        self._jobs: dict[int, _Job] = {}
        self._events: Events = []

    @property
    def active(self) -> bool:
        return bool(self._jobs)

    def take_events(self) -> Events:
        events, self._events = self._events, []
        return events

    def command(self, message: tuple[Any, ...]) -> bool:
        """Apply one command; False for ``shutdown`` (every job is then cancelled)."""
        kind = message[0]
        if kind == "add":
            _, request_id, prompt, spec = message
            self._admit(request_id, prompt, spec)
            if spec.options.logprobs and request_id in self._jobs:
                self._jobs[request_id].logprobs = []
        elif kind == "cancel":
            job = self._jobs.get(message[1])
            if job is not None:
                self._cancel(job)
        elif kind == "shutdown":
            for job in self._jobs.values():
                self._cancel(job)
            return False
        return True

    @staticmethod
    def _cancel(job: _Job) -> None:
        if not job.cancelled:
            job.cancelled = True
            job.handle.cancel()  # GenAI frees the sequence at the end of the next step

    def _admit(self, request_id: int, prompt: tuple[int, ...], spec: GenerationSpec) -> None:
        try:
            config = apply_options(self._pipe.get_config(), spec.options,
                                   max_new_tokens=spec.max_new_tokens,
                                   structured_schema=spec.structured_schema)
            handle = self._pipe.add_request(request_id, ids_tensor(prompt), config)
        except Exception as exc:
            self._events.append(("error", request_id, str(exc)))
            return
        job = _Job(request_id, handle, IncrementalDetokenizer(self._tokenizer,
                                                              spec.special_tokens),
                   prompt_tokens=len(prompt))
        if self._ledger is not None:
            job.cached_tokens = self._ledger.admit(prompt)
        self._jobs[request_id] = job

    def step(self) -> None:
        """One ``step()`` of every admitted job, then what each produced."""
        try:
            self._pipe.step()
        except Exception as exc:  # the device failed: every request it held fails
            self._fail_all(exc)
            return
        for job in list(self._jobs.values()):
            handle = job.handle
            if not job.cancelled:
                ids: list[int] = []
                while handle.can_read():
                    for output in handle.read().values():
                        ids.extend(output.generated_ids)
                        job.finish_reason = output.finish_reason
                        if job.logprobs is not None:
                            job.logprobs.extend(zip(output.generated_ids,
                                                    output.generated_log_probs, strict=True))
                if ids:
                    job.tokens += len(ids)
                    if not job.first_ns:
                        job.first_ns = time.perf_counter_ns()
                        self._measure_cache(job)
                    self._emit(job, job.detokenizer.feed(ids))
            if handle.get_status() != self._running:
                del self._jobs[job.id]
                self._end(job)

    def _measure_cache(self, job: _Job) -> None:
        """Size the ledger when a request's prompt has just been read (its first token
        is out): its prompt's blocks are in use, and whatever else the usage counts
        (other requests) only makes the measured size smaller, never larger."""
        ledger = self._ledger
        if ledger is None:
            return
        try:
            usage = float(self._pipe.get_metrics().cache_usage)
        except Exception:  # a pipeline without metrics: the ledger vouches for nothing
            return
        ledger.measure(job.prompt_tokens, usage)

    def _end(self, job: _Job) -> None:
        """Report a job GenAI has freed (FINISHED, IGNORED or CANCEL after a step)."""
        if self._ledger is not None:
            self._ledger.occupy(job.tokens)
        handle = job.handle
        if handle.get_status() == self._ignored and not job.cancelled:
            self._events.append(("error", job.id, "the KV cache is too small for this request"))
            return
        if not job.cancelled:
            self._emit(job, job.detokenizer.finish())
        outcome = _outcome(job, handle)
        if job.logprobs is not None:
            # One token at a time: each entry's own text, as OpenAI's logprobs show it.
            tokens = [self._tokenizer.decode([token]) for token, _ in job.logprobs]
            outcome = replace(outcome, logprobs=tuple(
                (text, float(logprob)) for text, (_, logprob) in zip(tokens, job.logprobs,
                                                                     strict=True)))
        self._events.append(("end", job.id, outcome))

    def _emit(self, job: _Job, text: str) -> None:
        if text:
            job.text.append(text)
            self._events.append(("text", job.id, text))

    def _fail_all(self, exc: Exception) -> None:
        log.error("continuous batching step failed: %s", exc)
        failed, self._jobs = self._jobs, {}
        for job in failed.values():
            job.handle.cancel()
            self._events.append(("error", job.id, str(exc)))


def _outcome(job: _Job, handle: Any) -> Outcome:
    """Measured figures: GenAI's per-request metrics when it has them, ours otherwise."""
    import openvino_genai

    end = time.perf_counter_ns()
    prompt_tokens = completion_tokens = None
    ttft_ns = (job.first_ns or end) - job.start_ns
    generate_ns = end - job.start_ns
    metrics = None
    try:
        metrics = handle.get_perf_metrics()
    except Exception:  # not set when the request never reached a step
        metrics = None
    if metrics is not None:
        prompt_tokens = int(metrics.get_num_input_tokens())
        completion_tokens = int(metrics.get_num_generated_tokens())
        # Counted from add_request, so a request that waited for a batch slot says so.
        ttft_ns = int(metrics.get_ttft().mean * 1e6) or ttft_ns
        generate_ns = int(metrics.get_generate_duration().mean * 1e6) or generate_ns
    if completion_tokens is None or (job.cancelled and completion_tokens < job.tokens):
        completion_tokens = job.tokens
    if job.cancelled:
        finish = "cancelled"
    elif job.finish_reason == openvino_genai.GenerationFinishReason.LENGTH:
        finish = "length"
    else:
        finish = "stop"
    return Outcome("".join(job.text), finish, prompt_tokens, completion_tokens,
                   ttft_ns, generate_ns, cached_tokens=job.cached_tokens)

"""The step loop of continuous batching: one ``ContinuousBatchingPipeline``, one stepper.

GenAI's continuous-batching pipeline takes requests with ``add_request`` (one
``GenerationHandle`` each) and advances every running request by one token per
``step()``. :func:`run_steps` is the only caller of ``add_request``/``step``/``read``
for its pipeline: it takes commands, admits requests, steps while any is active and
reads each handle's new token ids. A thread of its own (:class:`_Handover`)
detokenizes them incrementally (:class:`IncrementalDetokenizer`) and hands out what
happened, one list of events per step (one hand-over per step, not per token), while
the next step already runs: a decode costs 0.3-0.45 ms right after a step on 2 CPU
cores, 3.5% of a lone stream's time when it waited between steps (GenAI's own
pipelines stream from a thread for the same reason).

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
import queue
import signal
import threading
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

#: Steps whose events may wait for the hand-over thread before the step loop waits
#: for it (it keeps up unless the other side stops reading).
HANDOVER_DEPTH = 64

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
    that have already arrived. Each step's results are detokenized and passed to
    ``emit`` on a thread of their own, in step order, while the next step runs. On
    ``shutdown`` every request is cancelled and stepped until GenAI has freed it (each
    gets its ``end``), and it returns once every event has been emitted. Errors of
    ``inbox`` and ``emit`` (the other side went away) propagate, and the requests it
    held are cancelled (GenAI frees them at the pipeline's next step). With
    ``prefix_caching`` (the pipeline was built with it) each outcome carries the prompt
    tokens the cache surely reused (:class:`~.prefix_ledger.PrefixLedger`).
    """
    stepper = _Stepper(pipe, PrefixLedger() if prefix_caching else None)
    handover = _Handover(stepper.render, emit)
    try:
        stopping = False
        while True:
            wait: float | None = 0 if stepper.active or stopping else None
            while not stopping and inbox.poll(wait):
                stopping = not stepper.command(inbox.recv())
                wait = 0
            if stepper.active:
                stepper.step()
            results = stepper.take_results()
            if results:
                handover.put(results)
            if stopping and not stepper.active:
                break
    except BaseException:
        stepper.abandon()
        raise
    finally:
        handover.close()


class _Handover:
    """Renders each step's results into events and emits them, on a thread of its own.

    :meth:`put` never reorders and waits only when :data:`HANDOVER_DEPTH` steps are
    pending. An error of ``render`` or ``emit`` ends the hand-over: the thread drops
    what follows, and :meth:`put` and :meth:`close` raise it in the step loop.
    """

    def __init__(self, render: Callable[[Events], Events],
                 emit: Callable[[Events], None]) -> None:
        self._render = render
        self._emit = emit
        self._pending: queue.Queue[Events | None] = queue.Queue(HANDOVER_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="npu-proxy-handover",
                                        daemon=True)
        self._thread.start()

    def put(self, results: Events) -> None:
        """Queue one step's results (raises the hand-over's error, if it had one)."""
        self._raise()
        self._pending.put(results)

    def close(self) -> None:
        """Emit everything queued, stop the thread and raise its error, if any."""
        self._pending.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (results := self._pending.get()) is not None:
            if self._error is not None:
                continue  # failed: drain, so the step loop never waits on a full queue
            try:
                events = self._render(results)
                if events:
                    self._emit(events)
            except BaseException as exc:  # reported to the step loop
                self._error = exc


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
    """One admitted request's state inside the step loop. The step loop's thread owns
    the counts, the hand-over thread ``detokenizer`` and ``text``."""

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
    """The pipeline, its admitted jobs and the results of the current step.

    A step's results are raw (``("ids", job, token ids)``, ``("end", job, Outcome
    without its text)``, ``("error", id, message)``) until :meth:`render` turns them
    into events; rendering runs on the hand-over thread, so it touches only what that
    thread owns (each job's detokenizer and text).
    """

    def __init__(self, pipe: Any, ledger: PrefixLedger | None = None) -> None:
        import openvino_genai

        self._pipe = pipe
        self._ledger = ledger
        self._tokenizer = pipe.get_tokenizer()
        self._running = openvino_genai.GenerationStatus.RUNNING
        self._ignored = openvino_genai.GenerationStatus.IGNORED
        self._jobs: dict[int, _Job] = {}
        self._results: Events = []

    @property
    def active(self) -> bool:
        return bool(self._jobs)

    def take_results(self) -> Events:
        """The raw results of the steps since the last call (see the class doc)."""
        results, self._results = self._results, []
        return results

    def render(self, results: Events) -> Events:
        """The events of raw ``results``, in order: token ids become text pieces, an end
        gets its job's whole text (and its logprobs' token texts)."""
        events: Events = []
        for result in results:
            kind = result[0]
            if kind == "ids":
                job = result[1]
                self._piece(events, job, job.detokenizer.feed(result[2]))
            elif kind == "end":
                job, outcome = result[1], result[2]
                if not job.cancelled:
                    self._piece(events, job, job.detokenizer.finish())
                outcome = replace(outcome, text="".join(job.text))
                if job.logprobs is not None:
                    # One token at a time: each entry's own text, as OpenAI's logprobs
                    # show it.
                    outcome = replace(outcome, logprobs=tuple(
                        (self._tokenizer.decode([token]), float(logprob))
                        for token, logprob in job.logprobs))
                events.append(("end", job.id, outcome))
            else:
                events.append(result)
        return events

    @staticmethod
    def _piece(events: Events, job: _Job, text: str) -> None:
        if text:
            job.text.append(text)
            events.append(("text", job.id, text))

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

    def abandon(self) -> None:
        """Cancel every job and forget them (the step loop is leaving on an error)."""
        for job in self._jobs.values():
            self._cancel(job)
        self._jobs.clear()

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
            self._results.append(("error", request_id, str(exc)))
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
                    self._results.append(("ids", job, ids))
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
            self._results.append(("error", job.id, "the KV cache is too small for this request"))
            return
        self._results.append(("end", job, _outcome(job, handle)))

    def _fail_all(self, exc: Exception) -> None:
        log.error("continuous batching step failed: %s", exc)
        failed, self._jobs = self._jobs, {}
        for job in failed.values():
            job.handle.cancel()
            self._results.append(("error", job.id, str(exc)))


def _outcome(job: _Job, handle: Any) -> Outcome:
    """Measured figures: GenAI's per-request metrics when it has them, ours otherwise
    (the text is the hand-over's to fill in)."""
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
    return Outcome("", finish, prompt_tokens, completion_tokens,
                   ttft_ns, generate_ns, cached_tokens=job.cached_tokens)

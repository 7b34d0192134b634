"""The CPU backend with the real SmolLM2-135M model (one compiled pipeline per run)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pytest
from npu_proxy.engine.backend import LoadedModel
from npu_proxy.engine.errors import CapabilityError, PromptTooLongError
from npu_proxy.engine.events import EmbeddingFinished, GenerationFinished
from npu_proxy.engine.types import (
    Done,
    EmbeddingRequest,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelInfo,
    ResponseFormat,
    SamplingOptions,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from npu_proxy.settings import Settings
from npu_proxy.testing import (
    BackendContract,
    LiveServer,
    RecordingSink,
    backend_plugin,
    make_app,
)
from npu_proxy_openvino import OpenVINOLanguageModel, tokens
from npu_proxy_openvino.options import apply_options
from npu_proxy_openvino.runner import LLMPipelineGenerator, PipelineConfig
from npu_proxy_openvino.testing import (
    shared_batching_factory,
    shared_pipeline_factory,
    stepping_here,
)
from npu_proxy_openvino_cpu import CpuBackend
from pydantic import BaseModel


@pytest.fixture
def backend(ov_settings: Settings, cpu_llm_pipeline: Any, cpu_batching_pipeline: Any) -> CpuBackend:
    return CpuBackend(ov_settings, ov_settings=stepping_here(),
                      pipeline_factory=shared_pipeline_factory(cpu_llm_pipeline),
                      batching_factory=shared_batching_factory(cpu_batching_pipeline))


@pytest.fixture
def model(smollm2: ModelInfo) -> ModelInfo:
    return smollm2


@pytest.fixture
async def lm(backend: CpuBackend, model: ModelInfo) -> OpenVINOLanguageModel:
    loaded = await backend.load(model)
    assert isinstance(loaded, OpenVINOLanguageModel)
    return loaded


class TestCpuBackendContract(BackendContract):
    """The core's backend contract, on the real model."""


def chat(text: str, **options: Any) -> GenerationRequest:
    return GenerationRequest(
        model="smollm2:135m",
        messages=(Message(role="user", content=text),),
        options=SamplingOptions(**options),
    )


async def run(loaded: LoadedModel, request: GenerationRequest) -> tuple[str, Done, list[Any]]:
    events: list[GenerationEvent] = [event async for event in loaded.generate(request)]
    done = events[-1]
    assert isinstance(done, Done)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, done, events


async def test_greedy_output_is_stable(lm: OpenVINOLanguageModel) -> None:
    request = chat("Name three colors.", temperature=0, max_tokens=24)
    first, _, _ = await run(lm, request)
    second, _, _ = await run(lm, request)
    assert first.strip()
    assert first == second


async def test_same_seed_same_sample(lm: OpenVINOLanguageModel) -> None:
    request = chat("Write a sentence about the sea.", temperature=1.0, top_p=0.95, seed=1234,
                   max_tokens=24)
    first, _, _ = await run(lm, request)
    second, _, _ = await run(lm, request)
    assert first.strip()
    assert first == second


async def test_stop_string_stops(lm: OpenVINOLanguageModel) -> None:
    prompt = "Count from 1 to 10 separated by commas."
    free, _, _ = await run(lm, chat(prompt, temperature=0, max_tokens=40))
    assert "5" in free  # without the stop string the model does reach 5
    stopped, done, _ = await run(lm, chat(prompt, temperature=0, max_tokens=40, stop=("5",)))
    assert "5" not in stopped
    assert "4" in stopped
    assert done.finish_reason == FinishReason.STOP
    assert done.stop_sequence == "5"
    assert free.startswith(stopped.rstrip())


async def test_stop_sequence_spanning_tokens_is_reported(lm: OpenVINOLanguageModel) -> None:
    prompt = "Count from 1 to 10 separated by commas."
    free, free_done, _ = await run(lm, chat(prompt, temperature=0, max_tokens=40))
    assert free_done.stop_sequence is None
    # From the first "3" to the first "5": several tokens long, whatever the format.
    stop = free[free.index("3") : free.index("5") + 1]
    assert len(lm._tokenizer.encode(stop).input_ids.data[0]) > 2
    stopped, done, _ = await run(
        lm, chat(prompt, temperature=0, max_tokens=40, stop=("never here", stop))
    )
    assert stopped == free[: free.index(stop)]
    assert done.stop_sequence == stop and done.finish_reason == FinishReason.STOP
    assert done.usage.completion_tokens < free_done.usage.completion_tokens
    # A stop string whose beginning appears is held back, then released whole.
    near_miss = free[free.index("3") : free.index("4") + 1] + "#"
    kept, kept_done, _ = await run(lm, chat(prompt, temperature=0, max_tokens=40,
                                            stop=(near_miss,)))
    assert kept == free and kept_done.stop_sequence is None
    assert kept_done.finish_reason == free_done.finish_reason


async def test_max_tokens_gives_length(lm: OpenVINOLanguageModel) -> None:
    _, done, _ = await run(lm, chat("Tell me a long story.", temperature=0, max_tokens=5))
    assert done.finish_reason == FinishReason.LENGTH
    assert done.usage.completion_tokens == 5
    assert done.usage.prefill_duration > 0
    assert done.usage.decode_duration > 0
    assert done.usage.total_duration >= done.usage.prefill_duration + done.usage.decode_duration


class Person(BaseModel):
    name: str
    age: int


async def test_json_schema_output_validates(lm: OpenVINOLanguageModel) -> None:
    request = GenerationRequest(
        model="smollm2:135m",
        messages=(Message(role="user", content="Describe a person as JSON."),),
        options=SamplingOptions(temperature=0, max_tokens=80),
        response_format=ResponseFormat(kind="json_schema", schema=Person.model_json_schema()),
    )
    text, done, _ = await run(lm, request)
    person = Person.model_validate_json(text)
    assert person.name
    assert done.finish_reason == FinishReason.STOP


async def test_cancel_after_three_pieces_stops_within_a_token(
    lm: OpenVINOLanguageModel, backend: CpuBackend, model: ModelInfo
) -> None:
    stream = lm.generate(chat("Tell me a long story about a dragon.", temperature=0,
                              max_tokens=200))
    pieces: list[str] = []
    async for event in stream:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
            if len(pieces) == 3:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    assert lm.last_usage is not None
    # The stop reaches the worker once the event loop has handled the break; the
    # runner-level test below pins "within a token" exactly.
    assert lm.last_usage.completion_tokens < 40
    # The device is free: the next generation runs at once.
    _, done, _ = await run(lm, chat("Hi", temperature=0, max_tokens=3))
    assert done.usage.completion_tokens == 3


def test_runner_stops_at_the_next_token(cpu_llm_pipeline: Any, smollm2: ModelInfo,
                                        backend: CpuBackend) -> None:
    generator = LLMPipelineGenerator(cpu_llm_pipeline)
    config = apply_options(generator.new_config(), SamplingOptions(temperature=0),
                           max_new_tokens=200)
    prompt = "<|im_start|>user\nTell me a long story about a dragon.<|im_end|>\n"
    pieces: list[str] = []
    after_stop = 0

    def on_piece(text: str) -> bool:
        nonlocal after_stop
        if len(pieces) >= 3:
            after_stop += 1
        pieces.append(text)
        return len(pieces) < 3

    ids = tokens.encode(cpu_llm_pipeline.get_tokenizer(), prompt + "<|im_start|>assistant\n")
    outcome = generator.run(ids, PipelineConfig(config), on_piece)
    assert outcome.finish == "cancelled"
    shown = asyncio.run(backend.count_text_tokens(smollm2, ["".join(pieces[:3])]))[0]
    assert outcome.completion_tokens is not None
    # Tokens = those shown + those GenAI's streamer held back for an unfinished word
    # (at most 3) + the single token in flight when CANCEL was returned.
    assert outcome.completion_tokens <= shown + 3 + 1
    assert after_stop <= 1  # only the final flush of held-back text follows


def test_the_runner_keeps_special_tokens_when_asked(cpu_llm_pipeline: Any) -> None:
    """With ``special_tokens`` the streamed text keeps the model's special tokens (here
    the end-of-turn token that ends the answer); by default GenAI skips them."""
    generator = LLMPipelineGenerator(cpu_llm_pipeline)
    ids = tokens.encode(cpu_llm_pipeline.get_tokenizer(), (
        "<|im_start|>user\nWhat is 2+2? Answer with one number.<|im_end|>\n"
        "<|im_start|>assistant\n"))

    def answer(special: bool) -> str:
        config = apply_options(generator.new_config(), SamplingOptions(temperature=0),
                               max_new_tokens=60)
        pieces: list[str] = []
        outcome = generator.run(ids, PipelineConfig(config, special), lambda p: (
            pieces.append(p) is None))
        assert outcome.finish == "stop"
        return "".join(pieces)

    plain, kept = answer(False), answer(True)
    assert "<|im_end|>" not in plain and kept == plain + "<|im_end|>"


async def test_task_cancellation_frees_the_device(lm: OpenVINOLanguageModel) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for event in lm.generate(chat("Tell me a story.", temperature=0, max_tokens=200)):
            if isinstance(event, TextDelta):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lm.last_usage is not None and lm.last_usage.completion_tokens < 200
    _, done, _ = await run(lm, chat("Hi", temperature=0, max_tokens=2))
    assert done.usage.completion_tokens == 2


async def test_counts_match_the_tokenizer(
    lm: OpenVINOLanguageModel, backend: CpuBackend, model: ModelInfo
) -> None:
    request = chat("Explain photosynthesis in one sentence.", temperature=0, max_tokens=4)
    counted = await backend.count_tokens(model, request)
    rendered = lm.render_prompt(request)
    assert counted == (await backend.count_text_tokens(model, [rendered]))[0]
    _, done, _ = await run(lm, request)
    assert done.usage.prompt_tokens == counted  # GenAI's own count of what it consumed
    # CJK text counts for real (a regex counter once counted it as zero).
    cjk = await backend.count_text_tokens(model, ["你好世界", "你好世界" * 10])
    assert 0 < cjk[0] < cjk[1]


async def test_chat_template_applied_once(lm: OpenVINOLanguageModel) -> None:
    request = GenerationRequest(
        model="smollm2:135m",
        messages=(
            Message(role="system", content="You answer tersely."),
            Message(role="user", content="Hi there"),
        ),
    )
    rendered = lm.render_prompt(request)
    assert rendered == (
        "<|im_start|>system\nYou answer tersely.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    raw = GenerationRequest(model="smollm2:135m", prompt="<|im_start|>user\nHi")
    assert lm.render_prompt(raw) == "<|im_start|>user\nHi"


async def test_raw_prompt_reaches_the_model_untouched(
    lm: OpenVINOLanguageModel, backend: CpuBackend, model: ModelInfo
) -> None:
    prompt = "The capital of France is"
    request = GenerationRequest(model="smollm2:135m", prompt=prompt,
                                options=SamplingOptions(temperature=0, max_tokens=3))
    _, done, _ = await run(lm, request)
    assert done.usage.prompt_tokens == (await backend.count_text_tokens(model, [prompt]))[0]


async def test_named_tool_choice_yields_a_tool_call(lm: OpenVINOLanguageModel) -> None:
    weather = ToolSpec(
        name="get_weather",
        description="Current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]},
    )
    request = GenerationRequest(
        model="smollm2:135m",
        messages=(Message(role="user", content="What is the weather in Paris?"),),
        tools=(weather,),
        tool_choice="get_weather",
        options=SamplingOptions(temperature=0, max_tokens=80),
    )
    rendered = lm.render_prompt(request)
    assert "get_weather" in rendered  # the tool reached the chat template
    _, done, events = await run(lm, request)
    calls = [e.call for e in events if isinstance(e, ToolCallDelta)]
    assert done.finish_reason == FinishReason.TOOL_CALLS
    assert [call.name for call in calls] == ["get_weather"]
    assert isinstance(calls[0].arguments.get("city"), str)


async def test_prompt_beyond_num_ctx_is_refused(lm: OpenVINOLanguageModel) -> None:
    with pytest.raises(PromptTooLongError):
        await run(lm, chat("word " * 100, num_ctx=64))


async def test_images_and_suffix_are_refused(lm: OpenVINOLanguageModel) -> None:
    with pytest.raises(CapabilityError):
        await run(lm, GenerationRequest(model="smollm2:135m", prompt="def f(", suffix="pass"))
    image = GenerationRequest(
        model="smollm2:135m", messages=(Message(role="user", content="?", images=(b"x",)),)
    )
    with pytest.raises(CapabilityError):
        await run(lm, image)


def test_warm_up_generates_sixteen_tokens_and_embeds(
    ov_settings: Settings, backend: CpuBackend
) -> None:
    """The server's warm-up (NPU_PROXY_WARMUP), on the real models: the default model
    generates 16 tokens, the default embedding model embeds once; both stay loaded."""
    sink = RecordingSink()
    settings = ov_settings.model_copy(update={"warmup": True, "device": "CPU",
                                              "embedding_device": "CPU"})
    inline = {"cpu": backend_plugin(backend), "sink": sink.plugin()}
    with LiveServer(make_app(settings, ["openvino"], inline)) as server:
        deadline = time.monotonic() + 120
        while not sink.of(EmbeddingFinished):
            assert time.monotonic() < deadline, "the warm-up did not finish"
            time.sleep(0.05)
        models = httpx.get(server.url + "/health").json()["models"]
    generated = sink.of(GenerationFinished)
    assert [(e.model, e.completion_tokens) for e in generated] == [("smollm2:135m", 16)]
    embedded = sink.of(EmbeddingFinished)
    assert [(e.model, e.inputs) for e in embedded] == [("all-minilm:latest", 1)]
    assert sorted((m["name"], m["state"]) for m in models) == [
        ("all-minilm:latest", "loaded"), ("smollm2:135m", "loaded")]


def test_the_cpu_s_own_parallelism_overrides_the_global_one(
    ov_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NPU_PROXY_CPU_MAX_PARALLEL", "2")
    backend = CpuBackend(ov_settings.model_copy(update={"max_parallel": 6}))
    assert backend.max_parallel == 2
    monkeypatch.delenv("NPU_PROXY_CPU_MAX_PARALLEL")
    assert CpuBackend(ov_settings.model_copy(update={"max_parallel": 6})).max_parallel == 6


async def test_a_batch_of_embeddings_equals_the_single_ones(
    ov_settings: Settings, minilm: ModelInfo
) -> None:
    """Holds on every CPU, AMX and AVX-512 BF16 ones included (see EXACT_CPU_NUMERICS)."""
    texts = ("the weather is nice today", "a kitten", "Paris is in France")

    def request(*inputs: str) -> EmbeddingRequest:
        return EmbeddingRequest(model="all-minilm:latest", inputs=inputs)

    batch = (await (await CpuBackend(ov_settings).load(minilm)).embed(request(*texts))).vectors
    # A second backend has an empty embedding cache, so each input really runs alone.
    alone = await CpuBackend(ov_settings).load(minilm)
    singles = [(await alone.embed(request(text))).vectors[0] for text in texts]
    assert len(batch) == 3 and len(batch[0]) == 384
    np.testing.assert_allclose(np.array(batch), np.array(singles), atol=1e-5)

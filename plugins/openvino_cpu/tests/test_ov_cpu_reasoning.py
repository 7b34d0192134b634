"""A reasoning template on the real model: the backend streams what the model writes
inside the thinking as reasoning, split from the answer, and counts its tokens.

No small reasoning model ships in a package, so SmolLM2 is given a template that opens
the thinking in the prompt (as DeepSeek-R1 distills do): it never writes the closing
marker, so everything it generates is reasoning."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from npu_proxy.engine.types import (
    Capability,
    Done,
    GenerationRequest,
    Message,
    ModelInfo,
    SamplingOptions,
    TextDelta,
    ThinkingDelta,
)
from npu_proxy.settings import Settings
from npu_proxy_openvino.language import Limits, OpenVINOLanguageModel
from npu_proxy_openvino.models import ModelPreparer
from npu_proxy_openvino.runner import LLMPipelineGenerator

R1_STYLE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


async def test_a_thinking_template_streams_reasoning(
    ov_settings: Settings, smollm2: ModelInfo, cpu_llm_pipeline: Any
) -> None:
    import openvino_genai

    folder = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    tokenizer = openvino_genai.Tokenizer(str(folder))  # its own: the shared one stays as is
    tokenizer.set_chat_template(R1_STYLE)
    generator = LLMPipelineGenerator(cpu_llm_pipeline)
    limits = Limits(prompt=None, context=smollm2.context_length)
    thinker = replace(smollm2, template=R1_STYLE,
                      capabilities=smollm2.capabilities | {Capability.THINKING})
    request = GenerationRequest(
        model=smollm2.name, messages=(Message(role="user", content="Why is the sky blue?"),),
        options=SamplingOptions(max_tokens=12, temperature=0),
    )

    async def run(info: ModelInfo) -> list[Any]:
        model = OpenVINOLanguageModel(info, "CPU", generator, tokenizer, limits)
        return [event async for event in model.generate(request)]

    plain = await run(replace(smollm2, template=""))  # no reasoning template: plain text
    reasoned = await run(thinker)
    text = "".join(e.text for e in plain if isinstance(e, TextDelta))
    thinking = "".join(e.text for e in reasoned if isinstance(e, ThinkingDelta))
    assert "</think>" not in text  # so all of it is thinking for the reasoning template
    assert thinking == text and thinking.strip()
    assert not [e for e in reasoned if isinstance(e, TextDelta)]
    done = reasoned[-1]
    assert isinstance(done, Done) and isinstance(plain[-1], Done)
    assert plain[-1].reasoning_tokens == 0
    # The thinking re-tokenized: the generated tokens, give or take a merge at the edges.
    assert abs(done.reasoning_tokens - done.usage.completion_tokens) <= 1


async def test_the_thinking_budget_closes_the_reasoning_and_the_model_answers(
    ov_settings: Settings, smollm2: ModelInfo, cpu_llm_pipeline: Any
) -> None:
    """The R1-style template never closes the thinking by itself: with a budget of 5
    tokens the backend closes it after 5 and the model goes on to answer."""
    import openvino_genai

    folder = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    tokenizer = openvino_genai.Tokenizer(str(folder))
    tokenizer.set_chat_template(R1_STYLE)
    thinker = replace(smollm2, template=R1_STYLE,
                      capabilities=smollm2.capabilities | {Capability.THINKING})
    model = OpenVINOLanguageModel(thinker, "CPU", LLMPipelineGenerator(cpu_llm_pipeline),
                                  tokenizer, Limits(prompt=None, context=smollm2.context_length))

    async def run(budget: int | None, max_tokens: int) -> list[Any]:
        request = GenerationRequest(
            model=smollm2.name, think=True, thinking_budget=budget,
            messages=(Message(role="user", content="Why is the sky blue?"),),
            options=SamplingOptions(max_tokens=max_tokens, temperature=0))
        return [event async for event in model.generate(request)]

    free = await run(None, 20)
    capped = await run(5, 20)
    thinking = "".join(e.text for e in capped if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in capped if isinstance(e, TextDelta))
    free_thinking = "".join(e.text for e in free if isinstance(e, ThinkingDelta))
    assert free_thinking.startswith(thinking) and len(thinking) < len(free_thinking)
    assert answer.strip() and "</think>" not in answer + thinking
    done = capped[-1]
    assert isinstance(done, Done)
    assert done.reasoning_tokens <= 6  # 5 tokens, give or take a merge at the edge
    # every generated token counted once, the reasoning's and the answer's, within max_tokens
    assert done.reasoning_tokens < done.usage.completion_tokens <= 20
    # a budget the reasoning never reaches changes nothing
    roomy = await run(1000, 20)
    assert [type(e) for e in roomy[:-1]] == [type(e) for e in free[:-1]]
    assert "".join(e.text for e in roomy if isinstance(e, ThinkingDelta)) == free_thinking
    # a budget that leaves no room to answer ends at the length limit
    tight = await run(5, 5)
    assert isinstance(tight[-1], Done) and tight[-1].finish_reason.value == "length"
    assert not [e for e in tight if isinstance(e, TextDelta)]

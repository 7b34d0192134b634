"""Reasoning in the OpenVINO backends: which templates think, the splitter that
separates thinking from the answer as it streams, and the template context."""

from __future__ import annotations

import pytest
from npu_proxy.engine.types import (
    Capability,
    GenerationRequest,
    Message,
    ModelInfo,
    ThinkLevel,
)
from npu_proxy.settings import Settings
from npu_proxy_openvino.chat import render_prompt, thinking_context
from npu_proxy_openvino.models import ModelPreparer
from npu_proxy_openvino.reasoning import (
    HARMONY,
    Markers,
    ThinkingSplitter,
    markers_for,
    opens_thinking,
    template_thinks,
)

THINK = Markers("<think>", "</think>")
#: The shapes reasoning templates take (written for these tests): Qwen3 and SmolLM3
#: take ``enable_thinking``; DeepSeek-R1 distills open the thinking in the prompt.
QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
R1_STYLE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
PLAIN = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def run(splitter: ThinkingSplitter, pieces: list[str]) -> tuple[str, str]:
    parts = [part for piece in pieces for part in splitter.feed(piece)] + splitter.finish()
    thinking = "".join(text for kind, text in parts if kind == "thinking")
    answer = "".join(text for kind, text in parts if kind == "text")
    return thinking, answer


OUTPUT = "<think>\nThe sky scatters blue light.\n</think>\n\nRayleigh scattering."


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_splitter_separates_thinking_at_any_piece_boundary(size: int) -> None:
    pieces = [OUTPUT[i : i + size] for i in range(0, len(OUTPUT), size)]
    thinking, answer = run(ThinkingSplitter(THINK), pieces)
    assert thinking == "\nThe sky scatters blue light.\n"
    assert answer == "Rayleigh scattering."


def test_splitter_inside_and_without_thinking() -> None:
    inside = OUTPUT.removeprefix("<think>")
    assert run(ThinkingSplitter(THINK, inside=True), list(inside)) == (
        "\nThe sky scatters blue light.\n", "Rayleigh scattering.")
    # A model that answers straight away: everything is answer, streamed at once.
    splitter = ThinkingSplitter(THINK)
    assert splitter.feed("Hello") == [("text", "Hello")]
    assert splitter.feed(" <think> is a tag") == [("text", " <think> is a tag")]
    # Cut off while thinking (max_tokens): what came is thinking, nothing is lost.
    assert run(ThinkingSplitter(THINK), ["<think>Hmm, </th"]) == ("Hmm, </th", "")


def test_templates_that_think() -> None:
    assert template_thinks(QWEN3_STYLE) and template_thinks(R1_STYLE)
    assert not template_thinks(PLAIN)
    assert markers_for("qwen3", QWEN3_STYLE) == THINK
    assert markers_for("qwen2", R1_STYLE) == THINK  # a distill: its template says so
    assert markers_for("qwen3", PLAIN) is None  # a family name alone is not enough


def test_the_default_model_does_not_think(smollm2: ModelInfo) -> None:
    assert smollm2.template and not template_thinks(smollm2.template)
    assert not smollm2.can(Capability.THINKING)


def test_thinking_context_reaches_a_real_template(
    ov_settings: Settings, smollm2: ModelInfo
) -> None:
    import openvino_genai

    folder = ModelPreparer(ov_settings.model_path).prepare(smollm2)
    tokenizer = openvino_genai.Tokenizer(str(folder))  # its own, the shared one stays as is

    def render(think: bool | ThinkLevel | None) -> str:
        request = GenerationRequest(
            model="m", messages=(Message(role="user", content="Hi"),), think=think
        )
        return render_prompt(tokenizer, request)

    tokenizer.set_chat_template(QWEN3_STYLE)
    assert render(False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render(None).endswith("<|im_start|>assistant\n")
    assert render("high") == render(True) == render(None)
    assert not opens_thinking(tokenizer, THINK)
    tokenizer.set_chat_template(R1_STYLE)
    assert opens_thinking(tokenizer, THINK)
    assert thinking_context(GenerationRequest(model="m", prompt="x", think="high")) == {
        "enable_thinking": True, "reasoning_effort": "high"}


#: gpt-oss's harmony output: the analysis channel, then the final one (as the model
#: writes it, special tokens kept).
HARMONY_OUTPUT = (
    "<|channel|>analysis<|message|>User asks for 2+2. That is 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
#: The shape of a harmony template (written for these tests).
HARMONY_STYLE = (
    "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
    "{# thinking in history: <|channel|>analysis<|message|> #}"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 200])
def test_harmony_channels_split_at_any_piece_boundary(size: int) -> None:
    pieces = [HARMONY_OUTPUT[i : i + size] for i in range(0, len(HARMONY_OUTPUT), size)]
    thinking, answer = run(ThinkingSplitter(HARMONY), pieces)
    assert thinking == "User asks for 2+2. That is 4."
    assert answer == "2 + 2 = 4."
    # straight to the final channel, without analysis
    direct = "<|channel|>final<|message|>Four.<|return|>"
    assert run(ThinkingSplitter(HARMONY), [direct[i : i + size] for i in range(
        0, len(direct), size)]) == ("", "Four.")


def test_harmony_templates_and_gpt_oss_are_recognised() -> None:
    assert template_thinks(HARMONY_STYLE)
    assert markers_for("gpt-oss", HARMONY_STYLE) is HARMONY
    assert markers_for("", HARMONY_STYLE) is HARMONY  # by the template alone
    assert HARMONY.special and not THINK.special
    assert markers_for("gpt-oss", PLAIN) is None  # a template without reasoning

"""True token counts past the context: the GGUF tokenizer GenAI writes caps a count at
the context (8,192 for SmolLM2); the tokenizer the backends count with does not."""

from __future__ import annotations

from pathlib import Path

import openvino_genai
import pytest
from npu_proxy.engine.types import GenerationRequest, Message, ModelInfo
from npu_proxy.settings import Settings
from npu_proxy_openvino import OpenVINOBackend, tokens
from npu_proxy_openvino.models import ModelPreparer

NINE_THOUSAND_WORDS = "word " * 9000


class CpuCounting(OpenVINOBackend):
    """The shared backend on the CPU, as a device plugin declares one."""

    name = "openvino-test"
    device = "CPU"


@pytest.fixture(scope="module")
def folder(ov_settings: Settings, smollm2: ModelInfo) -> Path:
    return ModelPreparer(ov_settings.model_path).prepare(smollm2)


def test_the_folder_s_own_tokenizer_caps_the_count(folder: Path) -> None:
    """What this works around: if GenAI stops capping, this fails and the patch can go."""
    own = openvino_genai.Tokenizer(str(folder))
    assert own.encode(NINE_THOUSAND_WORDS).input_ids.get_shape()[1] == 8192


def test_the_backend_s_tokenizer_counts_past_the_context(folder: Path) -> None:
    counting = tokens.TokenizerCache().get(folder)
    assert tokens.count(counting, NINE_THOUSAND_WORDS) == 9001  # what GenAI counts uncapped
    own = openvino_genai.Tokenizer(str(folder))
    for text in ("Hello there, how are you?", "<|im_start|>user\nhi<|im_end|>", "word " * 500):
        assert tokens.encode(counting, text) == tuple(
            int(i) for i in own.encode(text).input_ids.data[0])
    assert counting.chat_template == own.chat_template
    assert counting.decode([28120, 905]) == own.decode([28120, 905])


async def test_prepare_counts_a_long_chat_in_full(
    ov_settings: Settings, smollm2: ModelInfo
) -> None:
    backend = CpuCounting(ov_settings)
    request = GenerationRequest(model=smollm2.name,
                                messages=(Message("user", NINE_THOUSAND_WORDS),))
    prepared = await backend.prepare(smollm2, request)
    assert prepared.token_count > 9000
    assert len(prepared.form) == prepared.token_count

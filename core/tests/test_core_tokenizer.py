"""The engine's view of a model's template and tokenizer: the backend that counts the
model's tokens renders, tokenizes and detokenizes; one that cannot says so."""

from __future__ import annotations

from typing import Any

import pytest
from core_test_plugins import CHAT_MODEL, SimBackend
from npu_proxy.engine.errors import CapabilityError
from npu_proxy.engine.types import GenerationRequest, Message, ModelInfo


class WordBackend(SimBackend):
    """A simulated device whose tokens are the words of the text, numbered as met."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.words: list[str] = []

    async def render(self, model: ModelInfo, request: GenerationRequest) -> str:
        return " ".join(f"[{m.role}] {m.content}" for m in request.messages or ())

    async def tokenize(self, model: ModelInfo, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
            ids.append(self.words.index(word))
        return ids

    async def detokenize(self, model: ModelInfo, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


async def test_the_counting_backend_renders_tokenizes_and_detokenizes(make_engine: Any) -> None:
    ctx = await make_engine(WordBackend("SIM"))
    request = GenerationRequest(model=CHAT_MODEL.name,
                                messages=(Message(role="user", content="hello there"),))
    assert await ctx.engine.render(request) == "[user] hello there"
    ids = await ctx.engine.tokenize("mock", "hello there hello")
    assert ids == [0, 1, 0]
    assert await ctx.engine.detokenize("mock", ids) == "hello there hello"


async def test_a_backend_without_a_tokenizer_says_so(make_engine: Any) -> None:
    ctx = await make_engine(SimBackend("SIM"))
    request = GenerationRequest(model=CHAT_MODEL.name, prompt="hi")
    for call in (ctx.engine.render(request), ctx.engine.tokenize("mock", "hi"),
                 ctx.engine.detokenize("mock", [1])):
        with pytest.raises(CapabilityError, match="the sim-sim backend cannot"):
            await call

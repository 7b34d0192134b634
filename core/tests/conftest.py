"""Fixtures for the core's own tests: engines over simulated devices."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from npu_proxy.app import build_context
from npu_proxy.context import ServerContext
from npu_proxy.engine.types import GenerationRequest, Message, SamplingOptions
from npu_proxy.testing import backend_plugin, make_host, test_settings
from npu_proxy_mock.backend import MockBackend
from npu_proxy_mock.testing import models_plugin

#: The simulated models, registered by an inline plugin (only the devices a test asks for).
MODELS = models_plugin()

EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """``await make_engine(MockBackend(...), ..., **settings)`` -> a started ServerContext."""
    made: list[ServerContext] = []

    async def factory(*backends: MockBackend, **overrides: Any) -> ServerContext:
        settings = test_settings(tmp_path, **overrides)
        host = make_host([], {"devices": backend_plugin(*backends), "models": MODELS})
        ctx = build_context(settings, host)
        ctx.engine.start()
        await ctx.engine.probe()
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        await ctx.engine.close()


def chat(text: str = "hello", model: str = "mock", **options: Any) -> GenerationRequest:
    keep_alive = options.pop("keep_alive", None)
    return GenerationRequest(
        model=model,
        messages=(Message(role="user", content=text),),
        options=SamplingOptions(**options),
        keep_alive=keep_alive,
    )


@pytest.fixture
def request_for() -> Callable[..., GenerationRequest]:
    return chat

"""Fixtures for the core's own tests: engines over simulated devices (no plugin needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from core_test_plugins import SimBackend, models_plugin
from npu_proxy.app import build_context
from npu_proxy.context import ServerContext
from npu_proxy.engine.types import GenerationRequest, Message, SamplingOptions
from npu_proxy.testing import backend_plugin, make_host, test_settings

EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """``await make_engine(SimBackend(...), ..., **settings)`` -> a started ServerContext."""
    made: list[ServerContext] = []

    async def factory(*backends: SimBackend, **overrides: Any) -> ServerContext:
        settings = test_settings(tmp_path, **overrides)
        host = make_host([], {"devices": backend_plugin(*backends), "models": models_plugin()})
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

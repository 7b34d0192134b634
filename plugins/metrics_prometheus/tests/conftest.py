"""Fixtures for the Prometheus plugin's tests: a live mock server and a /metrics reader."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.engine.engine import Engine, Route
from npu_proxy.engine.types import (
    Done,
    GenerationRequest,
    Message,
    SamplingOptions,
    TextDelta,
    ToolCallDelta,
)
from npu_proxy.testing import LiveServer, make_app, test_settings
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """One scrape of ``/metrics``: sample name and labels -> value."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float]
    text: str

    def get(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when the series does not exist (yet)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        found = (dict(key) for (sample, key) in self.values if sample == name)
        return {labels[label] for labels in found if label in labels}


class Probe:
    """Drives one live server: scrapes ``/metrics`` over HTTP, runs engine requests."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    def scrape(self) -> Samples:
        response = httpx.get(f"{self.server.url}/metrics")
        assert response.status_code == 200, response.text
        values = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                values[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return Samples(values, response.text)

    def scrape_until(self, ready: Callable[[Samples], bool]) -> Samples:
        """Scrape until ``ready`` holds, at most for a few seconds; returns the last scrape.

        An HTTP request is counted just after its response is sent, so a scrape made
        right after it may race it; assert on the returned scrape.
        """
        deadline = time.monotonic() + 10
        while True:
            samples = self.scrape()
            if ready(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.02)

    def call(self, coro: Any) -> Any:
        return self.server.call(coro)

    def run(self, request: GenerationRequest) -> Ran:
        """Generate to the end on the server's loop, as a dialect would."""
        return self.server.call(run_chat(self.server.ctx.engine, request))


def chat(text: str = "hello", model: str = "mock", **options: Any) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        messages=(Message(role="user", content=text),),
        options=SamplingOptions(**options),
    )


@dataclass(frozen=True)
class Ran:
    """What a finished generation reported: its route, final event and streamed pieces."""

    route: Route
    done: Done
    pieces: int


async def run_chat(engine: Engine, request: GenerationRequest) -> Ran:
    async with await engine.generate(request) as generation:
        pieces = 0
        async for event in generation:
            pieces += isinstance(event, TextDelta | ToolCallDelta)
    assert generation.done is not None
    return Ran(generation.route, generation.done, pieces)


ServeFactory = Callable[..., Probe]


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeFactory]:
    """``serve(inline=None, dialects=(), **settings)`` -> a :class:`Probe` on a new live
    server with the mock backend (fast tokens), the Prometheus plugin and the named
    dialect plugins; stopped after the test."""
    monkeypatch.setenv("NPU_PROXY_MOCK_TOKEN_DELAY", "0.001")
    with contextlib.ExitStack() as stack:
        count = 0

        def factory(
            inline: dict[str, Any] | None = None, dialects: tuple[str, ...] = (), **settings: Any
        ) -> Probe:
            nonlocal count
            count += 1
            app = make_app(
                test_settings(tmp_path / f"app{count}", **settings),
                ["mock", "prometheus", *dialects],
                inline=inline,
            )
            return Probe(stack.enter_context(LiveServer(app)))

        yield factory


@pytest.fixture
def probe(serve: ServeFactory) -> Probe:
    """One live server whose device has a single slot."""
    return serve(max_parallel=1)


@pytest.fixture
def request_for() -> Callable[..., GenerationRequest]:
    """``request_for(text, model="mock", **options)`` -> a chat GenerationRequest."""
    return chat

"""``n`` choices of one chat completion, through the official SDK, on the mock device."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import openai
import pytest
from npu_proxy.engine.types import GenerationRequest, Message, SamplingOptions
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockBackend, MockCounters
from npu_proxy_openai.translate import choice_requests

HELLO = [{"role": "user", "content": "Say hello."}]


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_n_choices_come_back_whole_with_the_prompt_counted_once(
    client: openai.OpenAI, counters: MockCounters
) -> None:
    single = client.chat.completions.create(model="mock", messages=HELLO)  # type: ignore[arg-type]
    reply = client.chat.completions.create(model="mock", messages=HELLO, n=3)  # type: ignore[arg-type]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        assert choice.message.role == "assistant"
        assert choice.message.content  # the mock answers a prompt the same way each time
        assert choice.message.content == single.choices[0].message.content
        assert choice.finish_reason == "stop"
    assert reply.usage is not None and single.usage is not None
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens
    assert reply.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert counters.started == 4 and counters.finished == 4


def test_n_choices_stream_each_with_its_role_text_and_finish(
    client: openai.OpenAI,
) -> None:
    whole = client.chat.completions.create(model="mock", messages=HELLO)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="mock", messages=HELLO, n=2, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    texts: dict[int, list[str]] = defaultdict(list)
    roles: dict[int, list[str]] = defaultdict(list)
    finishes: dict[int, list[str]] = defaultdict(list)
    usage = None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        [choice] = chunk.choices
        if choice.delta.role:
            roles[choice.index].append(choice.delta.role)
            assert not texts[choice.index]  # the role comes before any text
        if choice.delta.content:
            texts[choice.index].append(choice.delta.content)
        if choice.finish_reason:
            finishes[choice.index].append(choice.finish_reason)
    assert set(texts) == {0, 1}
    for index in (0, 1):
        assert roles[index] == ["assistant"]
        assert "".join(texts[index]) == whole.choices[0].message.content
        assert finishes[index] == ["stop"]
    assert usage is not None and whole.usage is not None
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == 2 * whole.usage.completion_tokens


def test_choices_run_at_once_where_the_device_has_slots(
    server_with: Callable[..., LiveServer],
) -> None:
    backend = MockBackend(token_delay=0.02, max_parallel=4)
    with server_with(backend) as server:
        reply = sdk(server).chat.completions.create(model="mock", messages=HELLO, n=3)  # type: ignore[arg-type]
    assert len(reply.choices) == 3
    assert backend.counters.peak_active == 3


@pytest.mark.parametrize("stream", [False, True])
def test_a_one_slot_device_serves_the_choices_in_turn(
    server_with: Callable[..., LiveServer], stream: bool
) -> None:
    backend = MockBackend(token_delay=0.002, max_parallel=1)
    with server_with(backend) as server:
        client = sdk(server)
        if stream:
            indexes = {
                choice.index
                for chunk in client.chat.completions.create(
                    model="mock", messages=HELLO, n=3, stream=True)  # type: ignore[arg-type]
                for choice in chunk.choices if choice.finish_reason
            }
            assert indexes == {0, 1, 2}
        else:
            reply = client.chat.completions.create(model="mock", messages=HELLO, n=3)  # type: ignore[arg-type]
            assert len(reply.choices) == 3
    assert backend.counters.peak_active == 1
    assert backend.counters.finished == 3


def test_closing_a_stream_of_choices_cancels_every_one(
    server_with: Callable[..., LiveServer],
) -> None:
    backend = MockBackend(token_delay=0.2, max_parallel=4)
    with server_with(backend) as server:
        stream = sdk(server).chat.completions.create(
            model="mock", messages=HELLO, n=3, stream=True)  # type: ignore[arg-type]
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        deadline = time.monotonic() + 10
        while backend.counters.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.counters.active == 0
        assert backend.counters.cancelled == 3
        queue = server.ctx.engine.queues["MOCK"]
        assert queue.in_flight == 0 and queue.waiting == 0


def test_each_choice_samples_with_its_own_seed() -> None:
    work = GenerationRequest(model="m", messages=(Message(role="user", content="x"),),
                             options=SamplingOptions(seed=7, temperature=1.0))
    seeds = [w.options.seed for w in choice_requests(work, 3)]
    assert seeds == [7, 8, 9]
    unseeded = GenerationRequest(model="m", messages=work.messages)
    assert [w.options.seed for w in choice_requests(unseeded, 2)] == [None, None]


def test_text_completions_still_take_one_choice(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as many:
        client.completions.create(model="mock", prompt="Hi", n=2)
    assert many.value.param == "n"
    assert "/v1/chat/completions" in many.value.message

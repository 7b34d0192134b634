"""Embeddings (float and the SDK's default base64), text completions and the model list."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
from npu_proxy_mock.backend import MockCounters
from openai.types import Completion, CreateEmbeddingResponse, Model

EMBED_MODEL = "mock-embed"
CHAT_MODEL = "mock"


# --- embeddings ----------------------------------------------------------------------


def test_default_base64_call_returns_the_float_vectors(client: openai.OpenAI) -> None:
    texts = ["first text", "second, longer text"]
    default = client.embeddings.create(model=EMBED_MODEL, input=texts)  # asks for base64
    floats = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert isinstance(default, CreateEmbeddingResponse)
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 384
    for decoded, plain in zip(default.data, floats.data, strict=True):
        # float32 on the wire: equal to the float answer within float32 precision.
        assert all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
            for a, b in zip(decoded.embedding, plain.embedding, strict=True)
        )
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == 2 + 4  # the mock counts words and punctuation
    assert default.usage.total_tokens == default.usage.prompt_tokens
    assert default.model == EMBED_MODEL


def test_base64_is_little_endian_float32(http: httpx.Client) -> None:
    body = {"model": EMBED_MODEL, "input": "hello"}
    floats = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    encoded = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    raw = base64.b64decode(encoded.json()["data"][0]["embedding"])
    assert len(raw) == 4 * len(floats)
    assert list(struct.unpack(f"<{len(floats)}f", raw)) == [
        struct.unpack("<f", struct.pack("<f", v))[0] for v in floats
    ]
    assert encoded.headers["x-npu-proxy-device"] == "MOCK"


def test_dimensions_shorten_the_vectors(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=EMBED_MODEL, input="hello", dimensions=64)
    vector = reply.data[0].embedding
    assert len(vector) == 64
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)


async def test_async_embeddings(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.embeddings.create(model=EMBED_MODEL, input=["a", "b", "c"])
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(d.embedding) == 384 for d in reply.data)


# --- text completions ----------------------------------------------------------------


def test_completion_uses_the_raw_prompt(client: openai.OpenAI, counters: MockCounters) -> None:
    raw = client.completions.with_raw_response.create(
        model=CHAT_MODEL, prompt="The quick brown", max_tokens=5
    )
    reply = raw.parse()
    assert isinstance(reply, Completion)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert counters.prompts[-1] == "The quick brown"  # no chat template
    (choice,) = reply.choices
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 3
    assert reply.usage.completion_tokens == 5 == len(choice.text.split())
    assert raw.headers["x-npu-proxy-device"] == "MOCK"


def test_completion_default_max_tokens_is_sixteen(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time")
    assert reply.usage is not None and reply.usage.completion_tokens <= 16


def test_completion_list_echo_and_stop(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=CHAT_MODEL, prompt=["Alpha", "Beta"], echo=True, max_tokens=4
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text.startswith("Alpha")
    assert reply.choices[1].text.startswith("Beta")
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    full = client.completions.create(model=CHAT_MODEL, prompt="Gamma", max_tokens=10)
    stop = full.choices[0].text.split()[1]
    cut = client.completions.create(model=CHAT_MODEL, prompt="Gamma", max_tokens=10, stop=stop)
    assert stop not in cut.choices[0].text
    assert cut.choices[0].finish_reason == "stop"


def test_completion_stream_with_usage(client: openai.OpenAI, http: httpx.Client) -> None:
    whole = client.completions.create(model=CHAT_MODEL, prompt=["One", "Two"], max_tokens=6)
    chunks = list(
        client.completions.create(
            model=CHAT_MODEL,
            prompt=["One", "Two"],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(isinstance(c, Completion) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert {c.object for c in chunks} == {"text_completion"}
    *content, last = chunks
    assert last.choices == [] and last.usage == whole.usage
    for index in (0, 1):
        text = "".join(c.choices[0].text for c in content if c.choices[0].index == index)
        assert text == whole.choices[index].text
        finishes = [c.choices[0].finish_reason for c in content if c.choices[0].index == index]
        assert finishes[-1] == "length"
    # Without include_usage no chunk carries a usage field.
    with http.stream(
        "POST",
        "/v1/completions",
        json={
            "model": CHAT_MODEL,
            "prompt": "One",
            "stream": True,
            "max_tokens": 2,
        },
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


# --- models --------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    listed = list(client.models.list())
    assert all(isinstance(m, Model) for m in listed)
    ids = {m.id for m in listed}
    assert {"mock:latest", "mock-embed:latest"} <= ids
    assert all(m.object == "model" and m.owned_by for m in listed)
    one = client.models.retrieve("mock:latest")
    assert one.id == "mock:latest"
    assert client.models.retrieve("mock").id == "mock:latest"  # ":latest" is implied


async def test_async_models(aclient: openai.AsyncOpenAI) -> None:
    page = await aclient.models.list()
    assert "mock:latest" in {m.id for m in page.data}

"""Bad input on every route: the right status and OpenAI's error shape, never FastAPI's."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, MockCounters

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
USER = [{"role": "user", "content": "hi"}]
ExpectError = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole module: these requests change nothing on it."""
    settings = test_settings(tmp_path_factory.mktemp("errors"))
    with LiveServer(make_app(settings, plugins=["mock", "openai"])) as live:
        yield live


@pytest.fixture
def http(shared: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.url, timeout=30) as raw:
        yield raw


@pytest.fixture
def client(shared: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=shared.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def counters(shared: LiveServer) -> MockCounters:
    backend: MockBackend = shared.ctx.engine.backends["MOCK"]
    return backend.counters


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "mock", "messages": USER, **fields}


BAD_CHAT: list[tuple[str, Any, int, str | None]] = [
    ("missing model", {"messages": USER}, 400, "model"),
    ("empty model", chat(model=""), 400, "model"),
    ("model of wrong type", chat(model=5), 400, "model"),
    ("unknown model", chat(model="no-such-model"), 404, "model"),
    ("unsafe model name", chat(model="../../etc/passwd"), 400, "model"),
    ("missing messages", {"model": "mock"}, 400, "messages"),
    ("empty messages", chat(messages=[]), 400, "messages"),
    ("message not an object", chat(messages=["hi"]), 400, "messages[0]"),
    ("empty message object", chat(messages=[{}]), 400, "messages[0].role"),
    ("unknown role", chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
    (
        "content of wrong type",
        chat(messages=[{"role": "user", "content": 5}]),
        400,
        "messages[0].content",
    ),
    ("user without content", chat(messages=[{"role": "user"}]), 400, "messages[0].content"),
    (
        "unknown part type",
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                    ],
                }
            ]
        ),
        400,
        "messages[0].content[0]",
    ),
    (
        "tool without tool_call_id",
        chat(messages=[*USER, {"role": "tool", "content": "x"}]),
        400,
        "messages[1].tool_call_id",
    ),
    (
        "arguments not JSON",
        chat(
            messages=[
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
            ]
        ),
        400,
        "messages[1].tool_calls",
    ),
    ("stream not a boolean", chat(stream="yes"), 400, "stream"),
    ("n above 128", chat(n=129), 400, "n"),
    ("n of zero", chat(n=0), 400, "n"),
    ("stop of wrong type", chat(stop=5), 400, "stop"),
    ("stop list of numbers", chat(stop=[1, 2]), 400, "stop[0]"),
    ("negative max_tokens", chat(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens beyond uint32", chat(max_tokens=2**32), 400, "max_tokens"),
    ("fractional max_tokens", chat(max_tokens=1.5), 400, "max_tokens"),
    (
        "negative max_completion_tokens",
        chat(max_completion_tokens=-3),
        400,
        "max_completion_tokens",
    ),
    ("temperature too high", chat(temperature=5), 400, "temperature"),
    ("temperature a string", chat(temperature="hot"), 400, "temperature"),
    ("top_p above one", chat(top_p=1.5), 400, "top_p"),
    ("penalty out of range", chat(presence_penalty=3), 400, "presence_penalty"),
    ("seed a string", chat(seed="7"), 400, "seed"),
    ("unknown response_format", chat(response_format={"type": "xml"}), 400, "response_format.type"),
    (
        "json_schema without schema",
        chat(response_format={"type": "json_schema"}),
        400,
        "response_format.json_schema",
    ),
    (
        "stream_options without stream",
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
    ),
    (
        "tool of unknown type",
        chat(tools=[{"type": "custom", "custom": {"name": "x"}}]),
        400,
        "tools[0].type",
    ),
    (
        "tool without name",
        chat(tools=[{"type": "function", "function": {}}]),
        400,
        "tools[0].function.name",
    ),
    (
        "tool_choice names a missing tool",
        chat(
            tools=[{"type": "function", "function": {"name": "a"}}],
            tool_choice={"type": "function", "function": {"name": "b"}},
        ),
        400,
        "tool_choice",
    ),
    ("tool_choice of unknown value", chat(tool_choice="sometimes"), 400, "tool_choice"),
    ("required without tools", chat(tool_choice="required"), 400, "tool_choice"),
    ("embedding model", chat(model="mock-embed"), 400, "model"),
]


@pytest.mark.parametrize(
    ("body", "status", "param"), [case[1:] for case in BAD_CHAT], ids=[case[0] for case in BAD_CHAT]
)
def test_bad_chat_requests(
    http: httpx.Client,
    expect_error: ExpectError,
    counters: MockCounters,
    body: Any,
    status: int,
    param: str | None,
) -> None:
    started = counters.started
    expect_error(http.post(CHAT, json=body), status, param)
    assert counters.started == started  # nothing reached the device


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, EMBEDDINGS])
@pytest.mark.parametrize(
    "content",
    [b"", b"   ", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe", b'{"model": "mock",}'],
    ids=["empty", "blank", "truncated", "array", "string", "null", "not utf-8", "trailing comma"],
)
def test_malformed_bodies(
    http: httpx.Client, expect_error: ExpectError, path: str, content: bytes
) -> None:
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    expect_error(response, 400)


def test_sdk_raises_its_own_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    assert missing.value.type == "invalid_request_error"
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model="mock", messages=USER, n=129)  # type: ignore[arg-type]
    assert many.value.param == "n"


def test_image_to_a_text_only_model(client: openai.OpenAI, counters: MockCounters) -> None:
    started = counters.started
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
        ],
    }
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="mock", messages=[message])  # type: ignore[list-item]
    assert "text-only" in refused.value.message
    assert refused.value.code == "unsupported_value"
    # Remote images are never fetched.
    message["content"][1]["image_url"]["url"] = "http://192.168.0.1/cat.png"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as remote:
        client.chat.completions.create(model="mock", messages=[message])  # type: ignore[list-item]
    assert "data:" in remote.value.message
    assert counters.started == started


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "mock", "prompt": "hi", **fields}


BAD_COMPLETIONS: list[tuple[str, Any, int, str | None]] = [
    ("missing model", {"prompt": "hi"}, 400, "model"),
    ("unknown model", completion(model="nope"), 404, "model"),
    ("missing prompt", {"model": "mock"}, 400, "prompt"),
    ("prompt of wrong type", completion(prompt={"text": "hi"}), 400, "prompt"),
    ("empty prompt list", completion(prompt=[]), 400, "prompt"),
    ("token ids", completion(prompt=[1, 2, 3]), 400, "prompt"),
    ("lists of token ids", completion(prompt=[[1, 2], [3]]), 400, "prompt"),
    ("n above one", completion(n=5), 400, "n"),
    ("best_of above one", completion(best_of=3), 400, "best_of"),
    ("negative max_tokens", completion(max_tokens=-1), 400, "max_tokens"),
    ("stop of wrong type", completion(stop={"a": 1}), 400, "stop"),
    ("echo not a boolean", completion(echo="yes"), 400, "echo"),
    ("suffix to a model without insert", completion(suffix="end"), 400, "suffix"),
    ("embedding model", completion(model="mock-embed"), 400, "model"),
]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [case[1:] for case in BAD_COMPLETIONS],
    ids=[case[0] for case in BAD_COMPLETIONS],
)
def test_bad_completion_requests(
    http: httpx.Client, expect_error: ExpectError, body: Any, status: int, param: str | None
) -> None:
    expect_error(http.post(COMPLETIONS, json=body), status, param)


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": "mock-embed", "input": "hi", **fields}


BAD_EMBEDDINGS: list[tuple[str, Any, int, str | None]] = [
    ("missing model", {"input": "hi"}, 400, "model"),
    ("unknown model", embed(model="nope"), 404, "model"),
    ("missing input", {"model": "mock-embed"}, 400, "input"),
    ("input of wrong type", embed(input=5), 400, "input"),
    ("empty input list", embed(input=[]), 400, "input"),
    ("token ids", embed(input=[1, 2, 3]), 400, "input"),
    ("lists of token ids", embed(input=[[1, 2], [3]]), 400, "input"),
    ("unknown encoding_format", embed(encoding_format="hex"), 400, "encoding_format"),
    ("zero dimensions", embed(dimensions=0), 400, "dimensions"),
    ("dimensions beyond the model", embed(dimensions=100000), 400, "dimensions"),
    ("chat model", embed(model="mock"), 400, "model"),
]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [case[1:] for case in BAD_EMBEDDINGS],
    ids=[case[0] for case in BAD_EMBEDDINGS],
)
def test_bad_embedding_requests(
    http: httpx.Client, expect_error: ExpectError, body: Any, status: int, param: str | None
) -> None:
    expect_error(http.post(EMBEDDINGS, json=body), status, param)


@pytest.mark.parametrize(
    ("model_id", "status"),
    [
        ("no-such-model", 404),
        ("org/no-such-model:7b", 404),
        ("..%2F..%2Fetc%2Fpasswd", 400),
        ("C:%5Cmodels", 400),
        ("a%00b", 400),
        ("x" * 300, 400),
    ],
)
def test_bad_model_ids(
    http: httpx.Client, expect_error: ExpectError, model_id: str, status: int
) -> None:
    error = expect_error(http.get(f"/v1/models/{model_id}"), status)
    if status == 404:
        assert error["code"] == "model_not_found"


def test_unknown_route_and_wrong_method(http: httpx.Client, expect_error: ExpectError) -> None:
    assert expect_error(http.post("/v1/no-such-route", json={}), 404)["code"] == "not_found"
    expect_error(http.get(CHAT), 405)
    expect_error(http.delete("/v1/models"), 405)


def test_api_key_and_body_limit_errors_in_openai_shape(
    tmp_path_factory: pytest.TempPathFactory, expect_error: ExpectError
) -> None:
    settings = test_settings(tmp_path_factory.mktemp("guarded"), api_key="sesame", max_body=4096)
    with LiveServer(make_app(settings, plugins=["mock", "openai"])) as server:
        anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as denied:
            anonymous.models.list()
        assert denied.value.code == "invalid_api_key"
        assert "sesame" not in str(denied.value.body)
        keyed = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)
        assert "mock:latest" in {m.id for m in keyed.models.list()}
        big = {"model": "mock", "messages": [{"role": "user", "content": "x" * 10_000}]}
        response = httpx.post(
            server.url + CHAT, json=big, headers={"Authorization": "Bearer sesame"}
        )
        assert expect_error(response, 413)["code"] == "request_too_large"


def test_anthropic_paths_are_not_answered_in_openai_shape(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pytest.importorskip("npu_proxy_anthropic")
    settings = test_settings(tmp_path_factory.mktemp("both"))
    with LiveServer(make_app(settings, plugins=["mock", "openai", "anthropic"])) as server:
        anthropic_error = httpx.post(server.url + "/v1/messages", content=b"{")
        assert anthropic_error.status_code == 400
        assert anthropic_error.json()["type"] == "error"  # the longer prefix wins
        openai_error = httpx.post(server.url + CHAT, content=b"{")
        assert set(openai_error.json()) == {"error"}


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, EMBEDDINGS])
@pytest.mark.parametrize("stream", [False, True])
def test_odd_characters_never_cause_a_500(http: httpx.Client, path: str, stream: bool) -> None:
    text = "nul \\u0000, lone \\ud800 surrogate, emoji \U0001f600, CR\\r\\nLF"
    fields = {
        CHAT: f'"model": "mock", "messages": [{{"role": "user", "content": "{text}"}}]',
        COMPLETIONS: f'"model": "mock", "prompt": "{text}"',
        EMBEDDINGS: f'"model": "mock-embed", "input": "{text}"',
    }[path]
    if stream and path != EMBEDDINGS:
        fields += ', "stream": true'
    body = ("{" + fields + "}").encode()
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200 and stream and path != EMBEDDINGS:
        assert response.text.rstrip().endswith("data: [DONE]")

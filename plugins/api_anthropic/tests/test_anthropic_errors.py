"""Every error a client can cause: Anthropic's shape and status, never a 500 or a hang."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from npu_proxy.engine.errors import BusyError
from npu_proxy.testing import LiveServer, make_app, test_settings
from npu_proxy.web import HttpError
from npu_proxy_anthropic.plugin import AnthropicApi
from npu_proxy_mock.backend import MockBackend

MODEL = "claude-sonnet-4-6"
OK = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def post(server: LiveServer, payload: Any, path: str = "/v1/messages",
         **kwargs: Any) -> httpx.Response:
    if not isinstance(payload, bytes | str):
        # json.dumps escapes lone surrogates, which httpx's own encoder refuses to send.
        payload = json.dumps(payload)
    return httpx.post(server.url + path, content=payload, **kwargs)


def assert_error(response: httpx.Response, status: int, kind: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", ["empty"]),
        (b"{not json", ["invalid JSON"]),
        (b"[1, 2]", ["JSON object"]),
        ({k: v for k, v in OK.items() if k != "max_tokens"}, ["max_tokens is required"]),
        ({k: v for k, v in OK.items() if k != "model"}, ["model"]),
        ({**OK, "max_tokens": "16"}, ["max_tokens"]),
        ({**OK, "max_tokens": 0}, ["max_tokens"]),
        ({**OK, "max_tokens": 2**32}, ["max_tokens"]),
        ({**OK, "stream": "yes"}, ["stream"]),
        ({**OK, "temperature": 1.5}, ["temperature"]),
        ({**OK, "top_k": -1}, ["top_k"]),
        ({**OK, "messages": []}, ["messages"]),
        ({**OK, "messages": [{}]}, ["messages.0"]),
        ({**OK, "messages": "hello"}, ["messages"]),
        ({**OK, "messages": [{"role": "tool", "content": "x"}]}, ["role"]),
        ({**OK, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, ["video"]),
        ({**OK, "system": 5}, ["system"]),
        ({**OK, "stop_sequences": "END"}, ["stop_sequences"]),
        ({**OK, "stop_sequences": [""]}, ["stop_sequences"]),
        ({**OK, "tools": [{"name": "t"}]}, ["input_schema"]),
        ({**OK, "tool_choice": {"type": "any"}}, ["tool"]),
        ({**OK, "tools": [{"name": "t", "input_schema": {}}],
          "tool_choice": {"type": "tool", "name": "other"}}, ["other"]),
        ({**OK, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://10.0.0.1/x.png"}}]}]},
         ["base64"]),
        ({**OK, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "not base64!"}}]}]}, ["base64"]),
        ({**OK, "model": "../../etc/passwd"}, ["invalid model name"]),
        ({**OK, "model": ""}, ["model"]),
        ({**OK, "model": "claude-\ud800"}, ["invalid model name"]),
        ({**OK, "model": "claude-x\r\nX-Forged: 1"}, ["invalid model name"]),
    ],
)
def test_bad_input_is_a_400_in_anthropic_shape(
    server: LiveServer, payload: Any, words: list[str]
) -> None:
    assert_error(post(server, payload), 400, "invalid_request_error", *words)


def test_unusual_text_is_never_a_500(server: LiveServer) -> None:
    for text in ["\u0000", "\ud800 lone surrogate", "emoji \U0001f680 and \u4e2d\u6587"]:
        response = post(server, {**OK, "messages": [{"role": "user", "content": text}]})
        assert response.status_code in (200, 400), response.text
    response = post(server, {**OK, "model": "claude-opus-4-6[1m]"})
    assert response.status_code == 200 and response.json()["model"] == "claude-opus-4-6[1m]"


def test_bad_count_tokens_input(server: LiveServer) -> None:
    assert_error(post(server, {"model": MODEL, "messages": []}, "/v1/messages/count_tokens"),
                 400, "invalid_request_error", "messages")
    assert_error(post(server, b"{", "/v1/messages/count_tokens"), 400, "invalid_request_error")


def test_sdk_raises_its_own_error_types(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=8, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="gpt-4o", max_tokens=8,
                               messages=[{"role": "user", "content": "Hi"}])
    assert "gpt-4o" in missing.value.message


def test_unknown_model_names_the_model(server: LiveServer) -> None:
    assert_error(post(server, {**OK, "model": "llama9:70b"}), 404, "not_found_error",
                 "llama9:70b")
    assert_error(post(server, {"model": "nope", "messages": OK["messages"]},
                      "/v1/messages/count_tokens"), 404, "not_found_error", "nope")


def test_embedding_model_cannot_chat(server: LiveServer) -> None:
    assert_error(post(server, {**OK, "model": "mock-embed"}), 400, "invalid_request_error",
                 "mock-embed")


def test_unknown_paths_and_methods_under_the_prefix(server: LiveServer) -> None:
    assert_error(httpx.get(server.url + "/v1/messages"), 405, "invalid_request_error")
    assert_error(post(server, OK, "/v1/messages/batches/x"), 404, "not_found_error")


def test_claude_names_fall_back_to_the_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", raising=False)
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_DEFAULT_MODEL", "mock")
    with LiveServer(make_app(test_settings(tmp_path), plugins=["mock", "anthropic"])) as server:
        reply = post(server, {**OK, "model": "claude-haiku-4-5-20251001"})
        assert reply.status_code == 200
        assert reply.headers["x-npu-proxy-model"] == "mock:latest"
        assert reply.json()["model"] == "claude-haiku-4-5-20251001"
        # Only Claude names fall back; anything else must exist.
        assert_error(post(server, {**OK, "model": "gpt-4o"}), 404, "not_found_error")


def test_mapping_to_a_missing_model_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", "claude-*=qwen3:8b")
    with LiveServer(make_app(test_settings(tmp_path), plugins=["mock", "anthropic"])) as server:
        message = assert_error(post(server, OK), 404, "not_found_error", MODEL, "qwen3:8b")
    assert "NPU_PROXY_ANTHROPIC_MODEL_MAP" in message


def test_unmapped_claude_name_without_the_default_model_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NPU_PROXY_ANTHROPIC_MODEL_MAP", raising=False)
    monkeypatch.delenv("NPU_PROXY_ANTHROPIC_DEFAULT_MODEL", raising=False)
    settings = test_settings(tmp_path, default_model="absent:1b")
    with LiveServer(make_app(settings, plugins=["mock", "anthropic"])) as server:
        assert_error(post(server, OK), 404, "not_found_error", MODEL, "absent:1b")


def test_full_queue_is_overloaded_529_with_retry_after(
    server_with: Callable[..., LiveServer],
) -> None:
    backend = MockBackend("NPU", token_delay=0.05)
    with server_with(backend, max_queue=0) as server, httpx.Client(base_url=server.url) as http:
        stream = {**OK, "max_tokens": 64, "stream": True}
        with http.stream("POST", "/v1/messages", json=stream) as first:
            assert first.status_code == 200  # admitted: it holds the only slot
            client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(**OK)  # type: ignore[arg-type]
            streamed = first.read()
    error = caught.value
    assert error.status_code == 529
    assert error.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert int(error.response.headers["retry-after"]) >= 1
    assert b"event: message_stop" in streamed  # the admitted request still finished


def claude_code_like_request(model: str, *, sentences: int = 420) -> dict[str, Any]:
    """About 50 KB, shaped like Claude Code's first request: a long system prompt in
    blocks with cache_control, many tool definitions, metadata, a system reminder."""
    words = ["repository", "configuration", "implementation", "permissions", "terminal",
             "documentation", "dependencies", "conventions", "background", "formatting"]
    rng = random.Random(7)
    prose = " ".join(" ".join(rng.choice(words) for _ in range(9)) + "."
                     for _ in range(sentences))
    tools = [
        {"name": f"Tool{n}", "description": prose[n * 600 : n * 600 + 1500],
         "input_schema": {"type": "object", "additionalProperties": False,
                          "$schema": "http://json-schema.org/draft-07/schema#",
                          "properties": {"path": {"type": "string", "description": "a path"},
                                         "limit": {"type": "integer"}},
                          "required": ["path"]}}
        for n in range(16)
    ]
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": prose, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>" + prose[:2000] + "</system-reminder>"},
            {"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]}],
        "tools": tools,
        "metadata": {"user_id": "user_abc_account__session_123"},
        "temperature": 1,
    }


CLAUDE_CODE_HEADERS = {"anthropic-version": "2023-06-01",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                       "authorization": "Bearer local", "x-app": "cli"}


def test_claude_code_sized_request_over_a_device_limit(
    server_with: Callable[..., LiveServer],
) -> None:
    payload = claude_code_like_request(MODEL)
    assert len(json.dumps(payload)) > 45_000
    backend = MockBackend("NPU", max_prompt_len=1024)
    with server_with(backend) as server:
        counted = post(server, {k: payload[k] for k in ("model", "system", "messages", "tools")},
                       "/v1/messages/count_tokens").json()["input_tokens"]
        assert 1024 < counted < 8192  # over the device's limit, inside the model's context
        response = post(server, payload, "/v1/messages?beta=true", headers=CLAUDE_CODE_HEADERS,
                        timeout=30)
    assert_error(response, 400, "invalid_request_error", str(counted), "1024")
    assert backend.counters.started == 0


def test_claude_code_sized_request_with_default_settings(server: LiveServer) -> None:
    payload = claude_code_like_request(MODEL)
    response = post(server, payload, "/v1/messages?beta=true", headers=CLAUDE_CODE_HEADERS,
                    timeout=30)
    assert response.status_code == 200
    assert b"event: message_stop" in response.content


def test_prompt_beyond_the_model_context(server: LiveServer) -> None:
    payload = claude_code_like_request(MODEL, sentences=1200)  # ~140 KB, ~12k tokens
    count = post(server, {k: payload[k] for k in ("model", "system", "messages", "tools")},
                 "/v1/messages/count_tokens").json()["input_tokens"]
    response = post(server, payload, "/v1/messages?beta=true", headers=CLAUDE_CODE_HEADERS,
                    timeout=30)
    assert_error(response, 400, "invalid_request_error", str(count), "8192")


@pytest.mark.parametrize(
    ("status", "code", "wire", "kind"),
    [
        (400, "invalid_request", 400, "invalid_request_error"),
        (401, "unauthorized", 401, "authentication_error"),
        (403, "forbidden", 403, "permission_error"),
        (404, "model_not_found", 404, "not_found_error"),
        (413, "", 413, "request_too_large"),
        (503, "busy", 529, "overloaded_error"),
        (503, "loading", 529, "overloaded_error"),
        (503, "no_device", 503, "api_error"),
        (500, "backend_error", 500, "api_error"),
        (504, "timeout", 504, "api_error"),
    ],
)
def test_error_response_mapping(status: int, code: str, wire: int, kind: str) -> None:
    # 401/403/413 come from the core security middleware through this method (see
    # test_anthropic_security.py for them over HTTP).
    error = HttpError(status, "why", code=code, headers={"Retry-After": "2"})
    response = AnthropicApi().error_response(error)
    assert response.status_code == wire
    assert json.loads(bytes(response.body)) == {"type": "error",
                                                "error": {"type": kind, "message": "why"}}
    assert response.headers["retry-after"] == "2"


def test_engine_error_brings_its_retry_after() -> None:
    response = AnthropicApi().error_response(BusyError("the queue is full", retry_after=7))
    assert (response.status_code, response.headers["retry-after"]) == (529, "7")
    assert json.loads(bytes(response.body))["error"] == {"type": "overloaded_error",
                                                          "message": "the queue is full"}

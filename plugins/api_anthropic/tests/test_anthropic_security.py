"""The core's guards (API key, body limit, Host check) answer in Anthropic's shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def guarded(tmp_path: Path, anthropic_env: None) -> Iterator[LiveServer]:
    settings = test_settings(tmp_path, api_key="local-secret", max_body=4096)
    with LiveServer(make_app(settings, plugins=["mock", "anthropic"])) as server:
        yield server


def test_bearer_token_as_claude_code_sends_it(guarded: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=guarded.url, auth_token="local-secret",
                                 max_retries=0)
    message = client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)  # type: ignore[arg-type]
    assert message.content


def test_x_api_key_as_the_sdk_sends_it(guarded: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=guarded.url, api_key="local-secret", max_retries=0)
    count = client.messages.count_tokens(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert count.input_tokens > 0


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_authentication_error(guarded: LiveServer,
                                                      key: str | None) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(guarded.url + "/v1/messages", headers=headers,
                          json={"model": MODEL, "max_tokens": 4, "messages": HELLO})
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "local-secret" not in response.text
    if key:
        client = anthropic.Anthropic(base_url=guarded.url, auth_token=key, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)  # type: ignore[arg-type]


def test_oversized_body_is_request_too_large(guarded: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=guarded.url, auth_token="local-secret",
                                 max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": "x" * 8000}])
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_foreign_host_header_is_permission_error(guarded: LiveServer) -> None:
    response = httpx.post(guarded.url + "/v1/messages",
                          headers={"host": "evil.example.com",
                                   "authorization": "Bearer local-secret"},
                          json={"model": MODEL, "max_tokens": 4, "messages": HELLO})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"

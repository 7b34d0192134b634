"""The HTTP edge with every dialect: cross-site requests refused before any work, and
JSON parser limits answered with 400 in each dialect's shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer, make_app, test_settings

EVIL = "https://evil.example"


def ollama_shape(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)


def openai_shape(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def anthropic_shape(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("type") == "error"
            and {"type", "message"} <= set(body.get("error", {})))


Shape = Callable[[Any], bool]

#: (path, a valid body, the dialect's error shape)
ROUTES: list[tuple[str, dict[str, Any], Shape]] = [
    ("/api/chat", {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
     ollama_shape),
    ("/api/generate", {"model": "mock", "prompt": "hi"}, ollama_shape),
    ("/api/embed", {"model": "mock-embed", "input": "hi"}, ollama_shape),
    ("/api/pull", {"model": "hf.co/org/repo"}, ollama_shape),
    ("/api/delete", {"model": "mock"}, ollama_shape),
    ("/v1/chat/completions",
     {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}, openai_shape),
    ("/v1/completions", {"model": "mock", "prompt": "hi"}, openai_shape),
    ("/v1/embeddings", {"model": "mock-embed", "input": "hi"}, openai_shape),
    ("/v1/messages", {"model": "mock", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}, anthropic_shape),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(make_app(test_settings(tmp_path))) as live:
        yield live


def model_files(server: LiveServer) -> list[str]:
    root = server.ctx.settings.model_path
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def tags(server: LiveServer) -> set[str]:
    return {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}


def test_a_browser_cross_site_copy_is_refused_and_changes_nothing(server: LiveServer) -> None:
    before = model_files(server)
    # what a page on another site makes a browser send: no preflight for text/plain
    refused = httpx.post(server.url + "/api/copy",
                         content='{"source":"mock","destination":"csrf-proof"}',
                         headers={"Origin": EVIL, "Content-Type": "text/plain",
                                  "Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and ollama_shape(refused.json())
    assert "csrf-proof:latest" not in tags(server)
    assert model_files(server) == before
    allowed = httpx.post(server.url + "/api/copy",
                         json={"source": "mock", "destination": "same-site"},
                         headers={"Origin": "http://localhost:3000"})
    assert allowed.status_code == 200 and "same-site:latest" in tags(server)


@pytest.mark.parametrize(("path", "body", "shape"), ROUTES)
def test_every_route_refuses_another_origin_in_its_shape(
        server: LiveServer, path: str, body: dict[str, Any], shape: Shape) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    response = httpx.request(method, server.url + path, content=json.dumps(body),
                             headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert response.status_code == 403 and shape(response.json()), response.text
    assert "mock:latest" in tags(server)  # the delete did not happen either


DEEP = "[" * 1000 + "]" * 1000
HUGE_INT = "1" * 4400


@pytest.mark.parametrize(("path", "body", "shape"), ROUTES)
@pytest.mark.parametrize("case", ["deep", "huge-int"])
def test_parser_limits_answer_400_in_the_dialect_shape(
        server: LiveServer, path: str, body: dict[str, Any], shape: Shape, case: str) -> None:
    valid = json.dumps(body)
    extra = DEEP if case == "deep" else HUGE_INT
    content = valid[:-1] + f', "extra": {extra}' + "}"
    method = "DELETE" if path == "/api/delete" else "POST"
    response = httpx.request(method, server.url + path, content=content,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and shape(response.json()), response.text


def test_create_with_parameters_nested_900_deep_answers_400(server: LiveServer) -> None:
    parameters = '{"a": ' * 900 + "1" + "}" * 900
    content = '{"model": "deep", "from": "mock", "parameters": ' + parameters + "}"
    response = httpx.post(server.url + "/api/create", content=content)
    assert response.status_code == 400 and ollama_shape(response.json())
    assert "deep:latest" not in tags(server)

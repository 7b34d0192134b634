"""Bad input to every route: Ollama's error shape, the right status, nothing on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from npu_proxy.testing import LiveServer, inline_plugin, make_app, test_settings
from npu_proxy_mock.backend import MockBackend, mock_models


def device_plugin(backend: MockBackend) -> Any:
    return inline_plugin(
        npu_proxy_register_backends=lambda register: register(backend),
        npu_proxy_register_models=lambda register: [register(m) for m in mock_models()],
    )


JSON_ROUTES = [
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/pull"),
    ("POST", "/api/create"),
]

PATH_NAMES = ["../../x", "..\\..\\x", "C:\\x", "/etc/passwd", "a\x00b", "x" * 300, "a/b/c/d"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the many small refusals below (they never reach the device)."""
    root = tmp_path_factory.mktemp("shared")
    backend = MockBackend(token_delay=0.001)
    app = make_app(
        test_settings(root), plugins=["ollama"], inline={"device": device_plugin(backend)}
    )
    with LiveServer(app) as server:
        yield server


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_bodies_are_400(
    shared: LiveServer, method: str, path: str, content: bytes
) -> None:
    response = httpx.request(method, shared.url + path, content=content)
    _error(response, 400)


@pytest.mark.parametrize(
    ("path", "body", "mentions"),
    [
        ("/api/generate", {"prompt": "x"}, "model"),
        ("/api/generate", {"model": 42, "prompt": "x"}, "model"),
        ("/api/generate", {"model": "mock", "prompt": 1}, "prompt"),
        ("/api/generate", {"model": "mock", "prompt": "x", "stream": "yes"}, "stream"),
        ("/api/generate", {"model": "mock", "prompt": "x", "raw": "true"}, "raw"),
        (
            "/api/generate",
            {"model": "mock", "prompt": "x", "options": {"temperature": "hot"}},
            "temperature",
        ),
        ("/api/generate", {"model": "mock", "prompt": "x", "options": {"top_k": -1}}, "top_k"),
        (
            "/api/generate",
            {"model": "mock", "prompt": "x", "options": {"num_predict": "x"}},
            "num_predict",
        ),
        (
            "/api/generate",
            {"model": "mock", "prompt": "x", "options": {"num_predict": -3}},
            "num_predict",
        ),
        ("/api/generate", {"model": "mock", "prompt": "x", "options": {"top_p": 1.5}}, "top_p"),
        ("/api/generate", {"model": "mock", "prompt": "x", "options": {"seed": 1.5}}, "seed"),
        ("/api/generate", {"model": "mock", "prompt": "x", "options": {"stop": [1]}}, "stop"),
        (
            "/api/generate",
            {"model": "mock", "prompt": "x", "options": {"use_mmap": "no"}},
            "use_mmap",
        ),
        ("/api/generate", {"model": "mock", "prompt": "x", "options": [1]}, "options"),
        ("/api/generate", {"model": "mock", "prompt": "x", "keep_alive": "soon"}, "keep_alive"),
        ("/api/generate", {"model": "mock", "prompt": "x", "format": "xml"}, "format"),
        ("/api/generate", {"model": "mock", "prompt": "x", "images": ["***"]}, "base64"),
        ("/api/generate", {"model": "mock", "prompt": "x", "suffix": "y"}, "insert"),
        ("/api/generate", {"model": "mock", "prompt": "x", "logprobs": True, "top_logprobs": 2},
         "top_logprobs"),
        ("/api/chat", {"model": "mock", "messages": [{}]}, "role"),
        ("/api/chat", {"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ("/api/chat", {"model": "mock", "messages": "hello"}, "messages"),
        ("/api/chat", {"model": "mock", "messages": [{"role": "user", "content": 5}]}, "content"),
        (
            "/api/chat",
            {
                "model": "mock",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {}}],
            },
            "name",
        ),
        (
            "/api/chat",
            {
                "model": "mock",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                    }
                ],
            },
            "JSON",
        ),
        ("/api/embed", {"model": "mock-embed", "input": [1, 2]}, "input"),
        ("/api/embed", {"model": "mock-embed", "input": "x", "dimensions": -4}, "dimensions"),
        ("/api/embed", {"model": "mock-embed", "input": "x", "truncate": "no"}, "truncate"),
        ("/api/embeddings", {"model": "mock-embed", "prompt": ["x"]}, "prompt"),
        ("/api/copy", {"source": "mock"}, "destination"),
        ("/api/copy", {"source": "mock", "destination": 7}, "destination"),
        ("/api/show", {}, "model"),
        ("/api/pull", {"model": "mock", "stream": "no"}, "stream"),
        ("/api/create", {"model": "new"}, "from"),
        ("/api/create", {"model": "new", "from": "mock", "quantize": "q4_K_M"}, "quantization"),
        ("/api/create", {"model": "new", "from": "mock", "parameters": {"top_k": "many"}}, "top_k"),
    ],
)
def test_wrong_types_and_values_are_400(
    shared: LiveServer, path: str, body: dict[str, Any], mentions: str
) -> None:
    message = _error(httpx.post(shared.url + path, json=body), 400)
    assert mentions.lower() in message.lower()
    assert shared.ctx.engine.backends["MOCK"].counters.started == 0


def test_unknown_option_keys_are_ignored(server: LiveServer) -> None:
    body = {
        "model": "mock",
        "prompt": "x",
        "stream": False,
        "options": {"mirostat": 2, "tfs_z": 1.0, "numa": False, "made_up": "anything"},
    }
    assert httpx.post(server.url + "/api/generate", json=body).json()["done"] is True


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/generate", {"model": "ghost", "prompt": "x"}),
        ("POST", "/api/chat", {"model": "ghost", "messages": [{"role": "user", "content": "x"}]}),
        ("POST", "/api/embed", {"model": "ghost", "input": "x"}),
        ("POST", "/api/embeddings", {"model": "ghost", "prompt": "x"}),
        ("POST", "/api/show", {"model": "ghost"}),
        ("DELETE", "/api/delete", {"model": "ghost"}),
        ("POST", "/api/copy", {"source": "ghost", "destination": "other"}),
        ("POST", "/api/pull", {"model": "ghost"}),
        ("POST", "/api/generate", {"model": "ghost", "prompt": ""}),
    ],
)
def test_unknown_model_is_404(
    shared: LiveServer, method: str, path: str, body: dict[str, Any]
) -> None:
    response = httpx.request(method, shared.url + path, json=body)
    message = _error(response, 404)
    assert "ghost" in message or message == "pull model manifest: file does not exist"


@pytest.mark.parametrize("name", PATH_NAMES)
def test_path_like_names_are_400_and_touch_nothing(
    server: LiveServer, store_snapshot: Callable[[], set[Path]], name: str
) -> None:
    before = store_snapshot()
    requests = [
        ("POST", "/api/generate", {"model": name, "prompt": "x"}),
        ("POST", "/api/chat", {"model": name, "messages": []}),
        ("POST", "/api/embed", {"model": name, "input": "x"}),
        ("POST", "/api/show", {"model": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/copy", {"source": "mock", "destination": name}),
        ("POST", "/api/copy", {"source": name, "destination": "fine"}),
        ("POST", "/api/pull", {"model": name}),
        ("POST", "/api/create", {"model": name, "from": "mock"}),
        ("POST", "/api/create", {"model": "fine", "from": name}),
    ]
    for method, path, body in requests:
        response = httpx.request(method, server.url + path, json=body)
        message = _error(response, 400)
        assert "/etc" not in message or name == "/etc/passwd"
    assert store_snapshot() == before
    listed = {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}
    assert listed == {"mock:latest", "mock-think:latest", "mock-embed:latest"}


def test_busy_device_is_503_with_retry_after(start: Callable[..., LiveServer]) -> None:
    backend = MockBackend(token_delay=0.05, max_parallel=1)
    server = start(backend, max_queue=0)
    body = {"model": "mock", "prompt": "a long story"}
    with httpx.stream("POST", server.url + "/api/generate", json=body) as first:
        lines = first.iter_lines()  # kept: dropping it would close the connection
        next(lines)
        second = httpx.post(server.url + "/api/generate", json=body)
        _error(second, 503)
        assert int(second.headers["retry-after"]) >= 1
    assert backend.counters.started == 1

"""A small OpenAI-compatible engine for tests: what a remote engine does, failures included.

:class:`FakeEngine` serves ``/v1/models``, ``/v1/chat/completions`` (streamed as
OpenAI streams, with usage in the last chunk, or whole), ``/v1/completions`` and
``/v1/embeddings``. Replies are deterministic (the reply names the last user message),
tool calls come in OpenAI's pieces. A test switches on what a real engine does when it
is in trouble: answer 429 with ``Retry-After`` (:attr:`busy`), stay silent
(:attr:`stall`), or drop the connection mid-stream (:attr:`cut_after`). It counts what
reached it (:attr:`requests`, :attr:`in_flight`, :attr:`cancelled`) and keeps the
``Authorization`` header it was sent. Serve it with ``npu_proxy.testing.LiveServer``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class _Cut(Exception):
    """Raised inside a streamed body: the server drops the connection mid-response."""


class FakeEngine:
    """An OpenAI-compatible engine under a test's control (see the module docstring)."""

    def __init__(self, models: tuple[str, ...] = ("fake-chat", "fake-embed"),
                 key: str | None = None, token_delay: float = 0.005,
                 context: int = 0) -> None:
        self.models = models
        #: the context the model list reports (vLLM's ``max_model_len``); 0: none
        self.context = context
        self.key = key
        self.token_delay = token_delay
        #: answer every request with 429 and this ``Retry-After`` (seconds) when set
        self.busy: int | None = None
        #: seconds to wait before answering a generation
        self.stall: float = 0.0
        #: chunks to send before dropping the connection, when set
        self.cut_after: int | None = None
        #: the JSON body of every generation and embedding request, in order
        self.requests: list[dict[str, Any]] = []
        #: the ``Authorization`` header of every request (None when absent)
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.cancelled = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ])

    # --- helpers -------------------------------------------------------------------

    def _refuse(self, request: Request) -> Response | None:
        self.authorizations.append(request.headers.get("authorization"))
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        if self.busy is not None:
            return JSONResponse({"error": {"message": "too many requests"}}, status_code=429,
                                headers={"Retry-After": str(self.busy)})
        return None

    async def _accept(self, request: Request) -> dict[str, Any] | Response:
        """The request's body, or the refusal the engine answers with instead."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        if body.get("model") not in self.models:
            return JSONResponse(
                {"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                status_code=404)
        if self.stall:
            await asyncio.sleep(self.stall)
        return body

    @staticmethod
    def reply(body: dict[str, Any]) -> list[str]:
        """The reply's pieces: the last user message echoed, capped by ``max_tokens``."""
        if "prompt" in body:
            said = str(body["prompt"])
        else:
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            content = users[-1]["content"] if users else ""
            said = content if isinstance(content, str) else " ".join(
                p.get("text", "") for p in content if isinstance(p, dict))
        words = ["You", " said:", *[f" {w}" for w in said.split()][:16]]
        limit = body.get("max_tokens")
        return words[:limit] if isinstance(limit, int) else words

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        text = json.dumps(body.get("messages") or body.get("prompt") or "")
        return len(text.split())

    # --- routes --------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        refused = self._refuse(request)
        if refused is not None and refused.status_code == 401:
            return refused
        extra = {"max_model_len": self.context} if self.context else {}
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake", **extra}
            for m in self.models
        ]})

    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        body = await self._accept(request)
        if isinstance(body, Response):
            return body
        pieces = self.reply(body)
        calls = body.get("tools") and body.get("tool_choice") != "none"
        finish = "tool_calls" if calls else (
            "length" if len(pieces) == body.get("max_tokens") else "stop")
        usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": len(pieces),
                 "total_tokens": self._prompt_tokens(body) + len(pieces)}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
            return JSONResponse({"id": "fake", "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
        return StreamingResponse(self._stream(body, pieces, finish, usage, chat),
                                 media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], pieces: list[str], finish: str,
                      usage: dict[str, int], chat: bool) -> AsyncIterator[bytes]:
        self.in_flight += 1
        finished = False
        sent = 0

        def chunk(choice: dict[str, Any], **extra: Any) -> bytes:
            nonlocal sent
            if self.cut_after is not None and sent >= self.cut_after:
                raise _Cut
            sent += 1
            payload = {"id": "fake", "object": "chat.completion.chunk", "created": 0,
                       "model": body["model"], "choices": [choice] if choice else [], **extra}
            return f"data: {json.dumps(payload)}\n\n".encode()

        try:
            if body.get("tools") and body.get("tool_choice") != "none":
                tool = body["tools"][0]["function"]["name"]
                yield chunk({"index": 0, "delta": {"role": "assistant", "tool_calls": [
                    {"index": 0, "id": "call_fake", "type": "function",
                     "function": {"name": tool, "arguments": ""}}]}})
                for part in ('{"city": ', '"Paris"}'):
                    yield chunk({"index": 0, "delta": {"tool_calls": [
                        {"index": 0, "function": {"arguments": part}}]}})
            else:
                for piece in pieces:
                    await asyncio.sleep(self.token_delay)
                    delta = {"delta": {"content": piece}} if chat else {"text": piece}
                    yield chunk({"index": 0, **delta, "finish_reason": None})
            end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
            yield chunk({"index": 0, **end, "finish_reason": finish})
            yield chunk({}, usage=usage)
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.in_flight -= 1
            if not finished:
                self.cancelled += 1

    async def _embeddings(self, request: Request) -> Response:
        body = await self._accept(request)
        if isinstance(body, Response):
            return body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = int(body.get("dimensions") or 8)
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(text), size)}
                for i, text in enumerate(inputs)]
        tokens = sum(len(str(text).split()) for text in inputs)
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(text: str, size: int) -> list[float]:
    """A unit vector that depends only on ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    """Poll ``condition()`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        time.sleep(0.02)


def health_devices(url: str) -> dict[str, dict[str, Any]]:
    """A server's ``/health/devices``, by device name."""
    import httpx

    body = httpx.get(url + "/health/devices", timeout=10).json()
    return {d["device"]: d for d in body["devices"]}


def probed(url: str) -> bool:
    """Whether a server has finished probing its devices (``/health/devices``)."""
    import httpx

    return not httpx.get(url + "/health/devices", timeout=10).json()["probing"]


def upstream_table(name: str, url: str, **keys: Any) -> str:
    """One ``[upstreams.NAME]`` TOML table for ``url`` (an OpenAI base) with ``keys``."""
    lines = [f"[upstreams.{name}]", f"url = {json.dumps(url)}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"

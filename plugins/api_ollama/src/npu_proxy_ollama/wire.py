"""Ollama's wire format: NDJSON streaming, RFC 3339 timestamps, statistics, model details.

Everything here is pure encoding; no route and no engine call lives in this module.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
from npu_proxy.engine.types import FinishReason, ModelInfo, Usage
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

NDJSON = "application/x-ndjson"


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with nanoseconds, as Ollama writes ``created_at``."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def rfc3339(moment: datetime) -> str:
    """``moment`` as RFC 3339 (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def line(payload: dict[str, Any]) -> bytes:
    """One NDJSON line: compact JSON and a newline (non-ASCII kept as UTF-8)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_json(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error body: ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def done_reason(reason: FinishReason) -> str:
    """Ollama has no ``tool_calls`` reason: a turn that ends in tool calls is a ``stop``."""
    return "length" if reason == FinishReason.LENGTH else "stop"


def statistics(usage: Usage) -> dict[str, int]:
    """The final chunk's measured counts and durations (nanoseconds)."""
    return {
        "total_duration": usage.total_duration,
        "load_duration": usage.load_duration,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": usage.prefill_duration,
        "eval_count": usage.completion_tokens,
        "eval_duration": usage.decode_duration,
    }


def digest_hex(info: ModelInfo) -> str:
    """The model's sha256 as bare hex (Ollama lists digests without the ``sha256:`` prefix)."""
    return info.digest.removeprefix("sha256:")


def details(info: ModelInfo) -> dict[str, Any]:
    """The ``details`` object of /api/tags, /api/show and /api/ps."""
    return {
        "parent_model": "",
        "format": info.format,
        "family": info.family,
        "families": [info.family] if info.family else None,
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }


class NDJSONResponse(StreamingResponse):
    """A streamed NDJSON body that stops, and closes its iterator, when the client leaves.

    Starlette only watches for ``http.disconnect`` under ASGI spec versions below 2.4;
    this response always does, so a generation is cancelled at its next token whatever
    the server. The iterator is closed (shielded) in every case, so the code behind it
    releases its device slot before the response returns.
    """

    media_type = NDJSON

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        except OSError:
            pass  # the client closed the socket mid-write: nothing left to tell it
        finally:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()


async def single(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """A one-line NDJSON body (Ollama answers some streamed requests with one object)."""
    yield line(payload)

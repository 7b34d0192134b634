"""Ollama's wire format: NDJSON lines, RFC 3339 timestamps, statistics, model details.

Everything here is pure encoding; no route and no engine call lives in this module.
Streaming itself is the core's (:mod:`npu_proxy.streaming`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from npu_proxy.engine.types import FinishReason, ModelInfo, Usage
from npu_proxy.streaming import ndjson_line

#: one NDJSON line: compact JSON, non-ASCII kept as UTF-8, and a newline
line = ndjson_line


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


def done_reason(reason: FinishReason) -> str:
    """Ollama has no ``tool_calls`` reason: a turn that ends in tool calls is a ``stop``."""
    return "length" if reason == FinishReason.LENGTH else "stop"


def statistics(usage: Usage) -> dict[str, int]:
    """The final chunk's measured counts and durations (nanoseconds).

    As Ollama's own, ``prompt_eval_count`` counts the prompt tokens evaluated: those
    read from the prefix cache (an earlier turn of the conversation) are not."""
    return {
        "total_duration": usage.total_duration,
        "load_duration": usage.load_duration,
        "prompt_eval_count": usage.evaluated_tokens,
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

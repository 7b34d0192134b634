"""Server-sent events as OpenAI sends them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

Only the framing lives here; the core's :func:`~npu_proxy.streaming.stream_response`
runs the stream (disconnects, closing the generations, errors after the first byte).
"""

from __future__ import annotations

from typing import Any

from npu_proxy.streaming import sse_event

DONE = b"data: [DONE]\n\n"

#: Proxies must not buffer a token stream; clients must not cache it.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any]) -> bytes:
    """One ``data:`` event, plain ASCII on the wire (non-ASCII escaped, as OpenAI does)."""
    return sse_event(data, ascii_only=True)

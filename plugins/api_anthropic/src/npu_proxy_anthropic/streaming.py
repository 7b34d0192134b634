"""The SSE stream of one message: ``event: <type>\\ndata: {...}\\n\\n`` per event.

Only the encoding lives here; the core's :func:`~npu_proxy.streaming.stream_response`
runs the stream (the client gone cancels the generation, the device slot is always
freed). A ``ping`` follows ``message_start`` and repeats after every ``ping_interval``
seconds without an event, as on the real API, so clients and proxies keep the
connection open through a long prefill. Errors after the first byte end the stream
with an ``error`` event (the status is already 200).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from npu_proxy.engine.errors import EngineError
from npu_proxy.engine.types import GenerationEvent
from npu_proxy.streaming import EVENT_STREAM, StreamEncoder, sse_event

from .encoder import MessageEncoder
from .errors import error_event

PING: dict[str, Any] = {"type": "ping"}


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event named after its ``type``."""
    return sse_event(event, event=event["type"])


class MessageStream(StreamEncoder[GenerationEvent]):
    """:class:`MessageEncoder`'s events, framed as Anthropic streams them."""

    media_type = EVENT_STREAM

    def __init__(self, encoder: MessageEncoder, ping_interval: float) -> None:
        self.encoder = encoder
        self.heartbeat_interval = ping_interval

    def opening(self) -> Iterable[bytes]:
        return [*(sse(event) for event in self.encoder.start()), sse(PING)]

    def encode(self, event: GenerationEvent) -> Iterable[bytes]:
        return [sse(out) for out in self.encoder.feed(event)]

    def failure(self, error: EngineError) -> Iterable[bytes]:
        return [sse(error_event(error))]

    def heartbeat(self) -> Iterable[bytes]:
        return [sse(PING)]

"""npu-proxy-jsonl: every engine event as one JSON line in a file (``NPU_PROXY_JSONL_PATH``)."""

from .sink import JsonlSink, event_record

__all__ = ["JsonlSink", "event_record"]

"""Logging that a client cannot forge: control characters in messages are escaped.

Paths, model names and headers reach log lines; a CR/LF in any of them must not start
a fake line. Prompts and completions are never logged at INFO (only DEBUG, escaped).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .redaction import redact_urls

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]|\n")


def escape_controls(text: str) -> str:
    """``\\r``, ``\\n`` and other control characters as visible escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    """A formatter whose message part never contains raw control characters, and whose
    output never carries a URL's credentials (:func:`~npu_proxy.redaction.redact_urls`,
    also in tracebacks, which keep their own newlines).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # The whole line: the traceback too, which another handler may have cached first.
        return redact_urls(super().format(record))


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server and uvicorn, all through SafeFormatter."""
    handler = {"class": "logging.StreamHandler", "formatter": "safe", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"safe": {"()": SafeFormatter, "fmt": FORMAT}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
        },
    }

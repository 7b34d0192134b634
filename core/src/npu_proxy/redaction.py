"""Credentials out of every URL the server prints or returns.

A hub endpoint may carry a user and password (``HF_ENDPOINT=http://user:pw@mirror``)
and a signed download link carries its signature in the query. :func:`redact_url`
removes both from one URL; :func:`redact_urls` does it to every URL inside a text (an
error message, a log line, a traceback). The log formatter and the hub's error
messages use them, so a secret in a URL never reaches a client, a log or a terminal.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What stands in for a removed secret.
REDACTED = "REDACTED"
#: Query parameters whose value is a credential (lower case; compared without ``-``/``_``).
SECRET_PARAMS = frozenset({
    "token", "accesstoken", "apikey", "key", "password", "passwd", "secret", "sig",
    "signature", "auth", "authorization", "credential", "xamzsignature", "xamzcredential",
    "xamzsecuritytoken", "googsignature", "googcredential", "keypairid", "policy", "hftoken",
})
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _secret(name: str) -> bool:
    plain = name.lower().replace("-", "").replace("_", "")
    return plain in SECRET_PARAMS or plain.endswith(("token", "secret", "password"))


def redact_url(url: str) -> str:
    """``url`` without its ``user:password@`` and with credential query values replaced.

    Anything that does not parse as a URL with a host is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]  # the host and port, without the user info
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _secret(k) else v) for k, v in pairs],
                              safe=REDACTED)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group()), text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact_urls`; installed on the loggers
    of the HTTP clients pulls use, so their request lines are safe in any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_loggers(*names: str) -> None:
    """Install one :class:`RedactingFilter` on each named logger (again: no effect)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())

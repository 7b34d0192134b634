"""Log-probabilities in OpenAI's shapes, from the generation's own per-token values.

The backend reports the chosen token's log-probability only (GenAI computes no
alternatives), so ``top_logprobs`` above 0 is refused with a 400 that says so, never
answered with a silent null. Streamed, the values arrive with the last chunk of a
choice (the backend hands them over when the generation ends).
"""

from __future__ import annotations

from typing import Any

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import TokenLogprob


def refuse_top_logprobs(count: int | None, param: str) -> None:
    """A 400 for ``count > 0``: only the chosen token's log-probability exists here."""
    if count:
        raise InvalidRequestError(
            f"{param} greater than 0 is not supported: the server reports the chosen "
            "token's log-probability only, not the most likely alternatives",
            param,
        )


def chat_logprobs(entries: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes,
    top_logprobs}], "refusal": null}``, one entry per generated token."""
    return {
        "content": [
            {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()),
             "top_logprobs": []}
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    """A text completion's legacy ``logprobs``: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (null) and each token's ``text_offset`` from ``offset``."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": None,
        "text_offset": offsets,
    }

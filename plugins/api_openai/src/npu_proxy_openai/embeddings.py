"""``POST /v1/embeddings``: vectors as JSON floats or, as the Python SDK asks by default,
base64 of little-endian float32 values.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import EmbeddingRequest
from npu_proxy.web import json_off_loop, read_json, until_disconnected
from starlette.requests import Request
from starlette.responses import Response

from .schemas import EmbeddingsRequest, parse


def inputs_of(value: str | list[str] | list[int] | list[list[int]]) -> tuple[str, ...]:
    """The texts to embed; token-id inputs and an empty list are refused."""
    if isinstance(value, str):
        return (value,)
    if not value:
        raise InvalidRequestError("input must not be empty", "input")
    texts = tuple(v for v in value if isinstance(v, str))
    if len(texts) != len(value):
        raise InvalidRequestError(
            "inputs given as token ids are not supported: the embedding backends take "
            "text; send the input as a string or a list of strings",
            "input",
        )
    return texts


def encode_base64(vector: list[float]) -> str:
    """The vector as base64 of little-endian float32 (what ``numpy.frombuffer`` reads)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def create_embeddings(ctx: ServerContext, request: Request) -> Response:
    """Embed every input in order; ``usage`` counts the tokens the model saw."""
    body = parse(EmbeddingsRequest, await read_json(request))
    work = EmbeddingRequest(
        model=body.model, inputs=inputs_of(body.input), dimensions=body.dimensions
    )
    embedding = await until_disconnected(request, ctx.engine.embed(work))
    as_base64 = body.encoding_format == "base64"
    tokens = embedding.result.prompt_tokens

    def content() -> dict[str, Any]:
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_base64(vector) if as_base64 else vector,
            }
            for index, vector in enumerate(embedding.result.vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # Thousands of vectors take long to encode: off the event loop.
    return await json_off_loop(content, embedding.route.headers())

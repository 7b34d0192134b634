"""``HEAD|POST /api/blobs/{digest}``: files uploaded by digest, for ``/api/create``'s ``files``.

The ``ollama`` CLI (``ollama create`` with ``FROM ./model.gguf``) and the Python client's
``create_blob`` upload a model's files here, then name them by digest in ``/api/create``.
``HEAD`` answers 200 when the blob is stored, else 404. ``POST`` streams the body into the
model store's blobs (verified against the digest: 400 on a mismatch; capped at
``NPU_PROXY_MAX_BLOB``: 413; written atomically) and answers 201 Created, or 200 without
reading the body when the blob is already there, as Ollama does.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.blobs import BlobTooLargeError, blob_hex
from npu_proxy.web import HttpError
from starlette.requests import Request
from starlette.responses import Response

#: The prefix whose bodies the core leaves to these routes (``ApiDialect.uploads``).
BLOBS_PREFIX = "/api/blobs"


def blob_routes(ctx: ServerContext) -> APIRouter:
    """The blob endpoints, closed over ``ctx``."""
    router = APIRouter()
    blobs = ctx.store.blobs

    @router.head(BLOBS_PREFIX + "/{digest}", include_in_schema=False)
    async def has_blob(digest: str) -> Response:
        blob_hex(digest)  # a malformed digest is a 400, not a 404
        if not await asyncio.to_thread(blobs.has, digest):
            raise HttpError(404, f"blob {digest} not found")
        return Response(status_code=200)

    @router.post(BLOBS_PREFIX + "/{digest}")
    async def upload_blob(digest: str, request: Request) -> Response:
        blob_hex(digest)
        limit = ctx.settings.max_blob
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BlobTooLargeError(f"blob is larger than {limit} bytes (NPU_PROXY_MAX_BLOB)")
        created = await blobs.write(digest, request.stream(), limit)
        return Response(status_code=201 if created else 200)

    return router

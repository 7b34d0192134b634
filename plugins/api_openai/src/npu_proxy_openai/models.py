"""``GET /v1/models`` and ``GET /v1/models/{id}``: the model store in OpenAI's shape.

Ids are the store's canonical names (``smollm2:latest``, ``hf.co/org/repo:tag``), so an
id may hold ``:`` and ``/``; unsafe names are refused by the store (400) and unknown
ones are 404 ``model_not_found``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from npu_proxy.context import ServerContext
from npu_proxy.engine.types import Capability, ModelInfo
from starlette.responses import Response

OWNER = "npu-proxy"


def model_body(info: ModelInfo, fallback_created: int) -> dict[str, Any]:
    """One model object; ``created`` is when the model arrived in the store.

    ``capabilities`` is not OpenAI's: it lists what the model can do (Ollama's names,
    in ``/api/show``'s order), so a client can tell before it asks.
    """
    created = int(info.modified_at.timestamp()) if info.modified_at else fallback_created
    return {
        "id": info.name, "object": "model", "created": created, "owned_by": OWNER,
        "capabilities": [c.value for c in Capability if info.can(c)],
    }


async def list_models(ctx: ServerContext) -> Response:
    started = int(ctx.started_at)
    return JSONResponse(
        {"object": "list", "data": [model_body(m, started) for m in ctx.store.models()]}
    )


async def retrieve_model(ctx: ServerContext, model_id: str) -> Response:
    return JSONResponse(model_body(ctx.store.resolve(model_id), int(ctx.started_at)))

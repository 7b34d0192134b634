"""Ollama's ``context`` of ``/api/generate`` (deprecated by Ollama, still sent by clients).

The final object of a generation that is not ``raw`` carries ``context``: the token ids
of the prompt as the model read it (its chat template applied) followed by the answer,
as Ollama's are. A request that sends them back continues that exchange: their text
(special tokens written out) comes first, then the new prompt as the template renders
it, and the whole is the prompt the model reads. The template and the tokenizer are the
model's, through the engine (the backend that counts the model's tokens renders,
tokenizes and detokenizes); a backend that cannot (a remote engine) gives no
``context``, and a request with one is a 400 there.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import CapabilityError, InvalidRequestError
from npu_proxy.engine.types import GenerationRequest, ModelInfo

log = logging.getLogger(__name__)


async def continue_from(
    ctx: ServerContext, info: ModelInfo, context: list[int], request: GenerationRequest
) -> GenerationRequest:
    """``request`` after the exchange ``context`` encodes: one raw prompt, the earlier
    text then this request's rendered prompt. Raises InvalidRequestError for a context
    longer than the model's, or ids that are not token ids."""
    if len(context) > info.context_length:
        raise InvalidRequestError(
            f"context holds {len(context)} tokens, more than the {info.context_length} "
            f"of {info.name}",
            param="context",
        )
    if any(i < 0 for i in context):
        raise InvalidRequestError("context holds negative token ids", param="context")
    earlier = await ctx.engine.detokenize(request.model, list(context))
    rendered = await ctx.engine.render(request)
    return replace(request, messages=None, prompt=earlier + rendered)


async def context_of(
    ctx: ServerContext, request: GenerationRequest, answer: str
) -> list[int] | None:
    """The token ids of ``request``'s prompt as the model read it and of ``answer``;
    None when the model's backend cannot render or tokenize (nothing is invented)."""
    try:
        prompt = request.prompt if request.prompt is not None else await ctx.engine.render(
            request)
        return await ctx.engine.tokenize(request.model, prompt + answer)
    except CapabilityError as exc:
        log.debug("no context for %s: %s", request.model, exc.message)
        return None

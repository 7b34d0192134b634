"""A request's prompt as an OpenVINO model reads it: rendered once, tokenized once.

:func:`prepare_prompt` renders the chat template and tokenizes the result with the
model's own tokenizer; the engine keeps the :class:`~npu_proxy.engine.types.PreparedPrompt`
for the token count, the context check and routing, and the generation feeds the same
token ids to GenAI (which then neither renders nor tokenizes again).
"""

from __future__ import annotations

from typing import Any

from npu_proxy.engine.prefix import fingerprint
from npu_proxy.engine.types import GenerationRequest, PreparedPrompt

from . import tokens
from .chat import render_prompt

#: The ``owner`` of prompts prepared here: every OpenVINO backend reads them (the
#: tokenizer is the model's, whichever device runs it).
OWNER = "openvino"


def prepare_prompt(tokenizer: Any, request: GenerationRequest) -> PreparedPrompt:
    """Render and tokenize ``request`` (blocking); ``form`` is the tuple of token ids."""
    ids = tokens.encode(tokenizer, render_prompt(tokenizer, request))
    return PreparedPrompt(len(ids), prefix=fingerprint(ids), owner=OWNER, form=ids)


def is_prepared(request: GenerationRequest) -> bool:
    """Whether ``request`` carries token ids prepared here (by an OpenVINO backend)."""
    prepared = request.prepared
    return prepared is not None and prepared.owner == OWNER and isinstance(prepared.form, tuple)


def prompt_ids(tokenizer: Any, request: GenerationRequest) -> tuple[int, ...]:
    """The token ids of ``request``'s prompt: the engine's prepared ones when it made
    them here, else prepared now (a direct call; blocking)."""
    if is_prepared(request):
        assert request.prepared is not None
        form: tuple[int, ...] = request.prepared.form
        return form
    ids: tuple[int, ...] = prepare_prompt(tokenizer, request).form
    return ids

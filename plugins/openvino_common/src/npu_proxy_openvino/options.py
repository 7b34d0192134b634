"""Core sampling options -> an OpenVINO GenAI ``GenerationConfig``.

Every field of :class:`~npu_proxy.engine.types.SamplingOptions` is either applied or
refused with :class:`InvalidRequestError`; none is silently dropped. The config always
starts from the model's own (``pipe.get_generation_config()``) so its EOS and stop
token ids survive.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import ResponseFormat, SamplingOptions


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    """Everything :func:`apply_options` needs, as plain (picklable) data.

    A generator turns it into a ``GenerationConfig`` where its pipeline lives: in this
    process, or in the worker process that owns a continuous-batching pipeline.
    """

    options: SamplingOptions
    max_new_tokens: int
    structured_schema: dict[str, Any] | None = None
    #: decode the answer with the model's special tokens kept (its reasoning markers
    #: are special tokens, as gpt-oss's harmony channels are); GenAI skips them otherwise
    special_tokens: bool = False


def validate_options(options: SamplingOptions) -> SamplingOptions:
    """``options`` within the core's ranges (:meth:`SamplingOptions.checked`, which are
    GenAI's), or :class:`InvalidRequestError` naming the parameter.

    The engine checks every request before admission; this covers a direct call, and
    keeps GenAI's own messages (which carry source paths) from ever being the answer.
    """
    return options.checked()


def apply_options(
    config: Any,
    options: SamplingOptions,
    *,
    max_new_tokens: int,
    structured_schema: dict[str, Any] | None = None,
) -> Any:
    """Write ``options`` onto ``config`` (a fresh ``GenerationConfig``) and return it.

    - ``temperature == 0``: greedy; ``> 0``: sampling at that temperature; ``None``: the
      model's default mode. A sampled request without a seed gets a random one, because
      GenAI's default seed is a constant and every answer would be the same.
    - ``top_k <= 0`` means "no top-k" (Ollama's convention), so the default is kept.
    - The prompt is already rendered, so GenAI must not apply the template again.
    """
    import openvino_genai

    config.max_new_tokens = max_new_tokens
    config.apply_chat_template = False
    if options.logprobs:
        config.logprobs = 1  # the chosen token's log-probability (GenAI computes no more)
    if options.temperature is not None:
        if options.temperature == 0:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = options.temperature
    if options.top_p is not None:
        config.top_p = options.top_p
    if options.top_k is not None and options.top_k > 0:
        config.top_k = options.top_k
    if options.min_p is not None:
        config.min_p = options.min_p
    if config.do_sample:
        config.rng_seed = options.seed if options.seed is not None else secrets.randbits(31)
    if options.repetition_penalty is not None:
        config.repetition_penalty = options.repetition_penalty
    if options.presence_penalty is not None:
        config.presence_penalty = options.presence_penalty
    if options.frequency_penalty is not None:
        config.frequency_penalty = options.frequency_penalty
    if options.stop:
        config.stop_strings = set(options.stop)
        # Kept in the output so the caller can be told which string hit; the model
        # wrapper cuts it off (see stops.py).
        config.include_stop_str_in_output = True
    if structured_schema is not None:
        config.structured_output_config = openvino_genai.StructuredOutputConfig(
            json_schema=json.dumps(structured_schema)
        )
    return config


def response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema that constrains output, or ``None`` for free text.

    ``json`` (Ollama ``format: "json"``, OpenAI ``json_object``) means any JSON object.
    """
    if response_format is None:
        return None
    if response_format.kind == "json":
        return {"type": "object"}
    if not isinstance(response_format.schema, dict):
        raise InvalidRequestError("json_schema needs a schema object", param="format")
    return response_format.schema

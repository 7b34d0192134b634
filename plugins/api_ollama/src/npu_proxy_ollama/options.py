"""Ollama's request knobs mapped onto the engine's types: options, keep_alive, format.

Ollama decodes ``options`` leniently by name and strictly by type: an unknown key is
ignored (clients still send ``mirostat``, ``tfs_z``, ``numa``...), a known key with a
wrong type or an impossible value is a 400. Every key the backend can honour reaches
:class:`SamplingOptions`; the rest are accepted and have no effect.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import ResponseFormat, SamplingOptions
from npu_proxy.settings import parse_duration
from npu_proxy.web import read_json, validate
from pydantic import BaseModel
from starlette.requests import Request

B = TypeVar("B", bound=BaseModel)


def _integer(key: str, value: Any) -> int:
    # JSON has one number type; Ollama accepts 40.0 for an integer option, not 40.5.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"option {key!r} must be an integer", param=f"options.{key}")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidRequestError(f"option {key!r} must be an integer", param=f"options.{key}")
    return int(value)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"option {key!r} must be a number", param=f"options.{key}")
    return float(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"option {key!r} must be true or false", param=f"options.{key}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    # LangChain and a few editors send a single stop string instead of a list.
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequestError(
            f"option {key!r} must be a list of strings", param=f"options.{key}"
        )
    return tuple(v for v in value if v)


def _at_least(low: float, checker: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        parsed = checker(key, value)
        if parsed < low:
            raise InvalidRequestError(
                f"option {key!r} must be at least {low:g}", param=f"options.{key}"
            )
        return parsed

    return check


def _between(low: float, high: float) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        parsed = _number(key, value)
        if not low <= parsed <= high:
            raise InvalidRequestError(
                f"option {key!r} must be between {low:g} and {high:g}", param=f"options.{key}"
            )
        return parsed

    return check


#: Every option Ollama knows, with its type check. Keys mapped to the engine are listed
#: in ``_ENGINE``; the rest are validated and then have no effect on OpenVINO GenAI.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "num_keep": _integer,
    "seed": _integer,
    "num_predict": _at_least(-2, _integer),
    "top_k": _at_least(0, _integer),
    "top_p": _between(0.0, 1.0),
    "min_p": _between(0.0, 1.0),
    "typical_p": _number,
    "repeat_last_n": _at_least(-1, _integer),
    "temperature": _at_least(0.0, _number),
    "repeat_penalty": _at_least(0.0, _number),
    "presence_penalty": _number,
    "frequency_penalty": _number,
    "stop": _strings,
    "num_ctx": _at_least(1, _integer),
    "num_batch": _integer,
    "num_gpu": _integer,
    "main_gpu": _integer,
    "use_mmap": _boolean,
    "use_mlock": _boolean,
    "num_thread": _integer,
    "numa": _boolean,
    "low_vram": _boolean,
    "f16_kv": _boolean,
    "vocab_only": _boolean,
    "logits_all": _boolean,
    "embedding_only": _boolean,
    "penalize_newline": _boolean,
    "tfs_z": _number,
    "mirostat": _integer,
    "mirostat_tau": _number,
    "mirostat_eta": _number,
}

_ENGINE = {
    "seed": "seed",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "temperature": "temperature",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "num_ctx": "num_ctx",
}


#: What Ollama samples with when neither the request nor the model says otherwise
#: (its api.DefaultOptions). Without them a small model decoded greedily tends to loop.
OLLAMA_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
}


def parse_options(raw: Any, defaults: Mapping[str, Any] | None = None) -> SamplingOptions:
    """``options`` over a model's stored ``defaults`` over Ollama's own, as SamplingOptions.

    ``num_predict`` -1 (until a stop or the context end), -2 (fill the context) and 0
    (Ollama's "no limit") all become ``max_tokens=None``: the engine bounds a generation
    by the context. A negative ``seed`` means a random one, as in Ollama. Values are
    held to the core's ranges (:meth:`SamplingOptions.checked`: out of range is refused,
    a huge ``num_predict`` or ``top_k`` is clamped). Raises :class:`InvalidRequestError`
    for a wrong type or value.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequestError("options must be a JSON object", param="options")
    merged = {**OLLAMA_DEFAULTS, **(defaults or {}), **raw}
    fields: dict[str, Any] = {}
    for key, value in merged.items():
        check = _CHECKS.get(key)
        if check is None or value is None:
            continue
        parsed = check(key, value)
        if key == "num_predict":
            fields["max_tokens"] = parsed if parsed > 0 else None
        elif key in _ENGINE:
            fields[_ENGINE[key]] = parsed
    try:
        return replace(SamplingOptions(), **fields).checked()
    except InvalidRequestError as exc:
        # Ollama's names: the option as the client sent it
        names = {engine: key for key, engine in _ENGINE.items()} | {"max_tokens": "num_predict"}
        ollama = names.get(exc.param or "", exc.param)
        raise InvalidRequestError(
            exc.message.replace(exc.param or "", f"option {ollama!r}", 1),
            param=f"options.{ollama}") from None


def parse_keep_alive(raw: Any) -> float | None:
    """Seconds from ``"5m"``, ``"1h30m"``, ``300`` or ``-1``; ``None`` when absent."""
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError:
        raise InvalidRequestError(
            "keep_alive must be a number of seconds or a duration such as '5m'",
            param="keep_alive",
        ) from None


def parse_format(raw: Any) -> ResponseFormat | None:
    """``"json"`` or a JSON Schema object; ``""``/null mean free text."""
    if raw is None or raw == "":
        return None
    if raw == "json":
        return ResponseFormat(kind="json")
    if isinstance(raw, dict):
        return ResponseFormat(kind="json_schema", schema=raw)
    raise InvalidRequestError(
        'invalid format: expected "json" or a JSON schema object', param="format"
    )


def decode_images(raw: Any, where: str = "images") -> tuple[bytes, ...]:
    """Base64 image strings (as the Ollama clients send them) as bytes."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise InvalidRequestError(f"{where} must be a list of base64 strings", param=where)
    images = []
    for item in raw:
        try:
            images.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"{where} holds data that is not valid base64", param=where
            ) from None
    return tuple(images)


def model_field(body: Mapping[str, Any]) -> str:
    """The model a request names: ``model``, or the older ``name`` Ollama still accepts."""
    value = body.get("model") or body.get("name")
    if value is None or value == "":
        raise InvalidRequestError("model is required", param="model")
    if not isinstance(value, str):
        raise InvalidRequestError("model must be a string", param="model")
    return value.strip()


async def read_named(request: Request, schema: type[B]) -> tuple[B, str]:
    """The request's body as ``schema`` and the model it names; a 400 for either."""
    data = await read_json(request)
    return validate(schema, data), model_field(data)

"""The Anthropic dialect's own settings, read from ``NPU_PROXY_ANTHROPIC_*``.

``NPU_PROXY_ANTHROPIC_MODEL_MAP`` maps the names Anthropic clients send (Claude Code
asks for ``claude-sonnet-4-5-20250929`` and the like) to local models: comma- or
newline-separated ``pattern=model`` rules, where a pattern is a case-insensitive glob,
e.g. ``claude-*haiku*=smollm2:135m,claude-*=qwen2.5-coder:7b``. The first rule that
matches wins.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from npu_proxy.engine.names import canonical
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MapRule = tuple[str, str]


def parse_model_map(value: Any) -> tuple[MapRule, ...]:
    """``"a*=m1, b=m2"`` -> ``(("a*", "m1:latest"), ("b", "m2:latest"))``.

    Raises ``ValueError`` naming the bad rule (a missing ``=``, an invalid model name).
    """
    if isinstance(value, tuple | list):
        return tuple((str(p), canonical(m)) for p, m in value)
    if not isinstance(value, str):
        raise ValueError("use 'pattern=model' rules separated by commas")
    rules: list[MapRule] = []
    for raw in re.split(r"[,;\n]", value):
        rule = raw.strip()
        if not rule:
            continue
        pattern, sep, model = rule.partition("=")
        if not sep or not pattern.strip() or not model.strip():
            raise ValueError(f"rule {rule!r} is not of the form pattern=model")
        try:
            rules.append((pattern.strip(), canonical(model.strip())))
        except Exception as exc:
            raise ValueError(f"rule {rule!r}: {getattr(exc, 'message', exc)}") from None
    return tuple(rules)


class AnthropicSettings(BaseSettings):
    """Field ``x`` is read from ``NPU_PROXY_ANTHROPIC_X``."""

    model_config = SettingsConfigDict(
        env_prefix="NPU_PROXY_ANTHROPIC_", extra="ignore", frozen=True
    )

    model_map: Annotated[tuple[MapRule, ...], NoDecode] = Field(
        (), description="pattern=model rules mapping requested names to local models."
    )
    default_model: str | None = Field(
        None,
        description="Model for unmapped claude-* names (unset: NPU_PROXY_DEFAULT_MODEL).",
    )
    ping_interval: float = Field(
        10.0, gt=0, description="Seconds of silence in a stream before a ping event."
    )

    @field_validator("model_map", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> tuple[MapRule, ...]:
        return parse_model_map(value)

    @field_validator("default_model")
    @classmethod
    def _canonical_default(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return canonical(value.strip())

"""Settings: every ``NPU_PROXY_*`` variable, validated once at startup.

Values come from the environment (and CLI flags, which override it). An invalid value
stops startup with a message naming the variable (see :func:`load_settings`).
A plugin with options of its own declares them in a subclass of
:class:`PluginSettings` (same ``NPU_PROXY_`` prefix) and reads them with
:func:`load_plugin_settings`; the core's :class:`Settings` holds only what the core uses.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "NPU_PROXY_"
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


#: The longest duration (Go's, about 292 years): what Ollama means by "forever". A
#: longer one (``1e400``, ``"99999999999999999999h"``) is taken as forever too.
MAX_DURATION = (2**63 - 1) / 1e9


def parse_duration(value: Any) -> float:
    """Seconds from an Ollama-style duration: ``"5m"``, ``"1h30m"``, ``"300"``, ``1800``.

    Negative means "forever", and so does anything longer than :data:`MAX_DURATION`
    (either way beyond it comes back as ``-1.0``), so every result is a finite number a
    timer can take. Raises ``ValueError`` for NaN and anything that is not a duration.
    """
    return bounded_duration(_parse_duration(value))


def bounded_duration(seconds: float) -> float:
    """``seconds``, or ``-1.0`` (forever) beyond :data:`MAX_DURATION` either way;
    ``ValueError`` for NaN."""
    if math.isnan(seconds):
        raise ValueError("a duration must be a number, not NaN")
    return -1.0 if abs(seconds) > MAX_DURATION else seconds


def _parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '5m'")
    if isinstance(value, int | float):
        # an integer of hundreds of digits is past any float: as long as one can be
        if isinstance(value, float) or abs(value) < 2**1023:
            return float(value)
        return math.inf if value > 0 else -math.inf
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string such as '5m'")
    text = value.strip()
    single = _DURATION.match(text)
    if single:
        return float(single.group(1)) * _UNIT_SECONDS[single.group(2) or "s"]
    # Go-style compound durations: "1h30m", "2m30s", "-1h".
    sign = -1.0 if text.startswith("-") else 1.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)", text.lstrip("-"))
    if parts and "".join(n + u for n, u in parts) == text.lstrip("-"):
        return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise ValueError(f"invalid duration {value!r}: use seconds or a string such as '5m'")


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3,
              "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from ``33554432``, ``"32MiB"``, ``"32M"`` (decimal) or ``"1GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use bytes or a size such as '32MiB'")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(match.group(1)) * _SIZE_UNIT[unit]


#: Browser origins allowed by default: local pages and editor webviews.
DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://[::1]", "http://[::1]:*", "http://0.0.0.0", "http://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)


def device_name(value: str) -> str:
    """A device as settings name it: ``npu`` is ``NPU``; a remote one keeps its own name
    (``upstream:lab``, only its kind lower-cased)."""
    value = value.strip()
    if ":" in value:
        kind, name = value.split(":", 1)
        return f"{kind.strip().lower()}:{name.strip()}"
    return value.upper()


def _device_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All server settings. Field ``x`` is read from ``NPU_PROXY_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    # --- the original specification's variables -----------------------------------
    host: str = Field("0.0.0.0", description="Bind address (0.0.0.0 so WSL2 can reach it).")
    port: int = Field(11435, ge=1, le=65535, description="TCP port.")
    device: str = Field("NPU", description="Preferred device: NPU, GPU or CPU.")
    fallback_device: str | None = Field(
        None, description="Fallback device; unset or 'auto' tries NPU, GPU, CPU in order."
    )
    real_inference: bool = Field(
        True, description="1: real inference (OpenVINO); 0: the deterministic mock backend."
    )
    model_path: Path = Field(
        Path("~/.cache/npu-proxy/models"), description="Model store directory."
    )
    max_blob: int = Field(
        64 * 1024**3, ge=1024, description="Largest file uploaded as a blob (Ollama's "
        "'/api/blobs', which 'ollama create' uses), in bytes ('64GiB'); larger ones get 413."
    )
    blob_ttl: float = Field(
        3600.0, ge=0, description="Seconds an uploaded blob that no model uses is kept "
        "(a model made from it keeps it until the model is deleted)."
    )
    inference_timeout: float = Field(
        180.0, gt=0, description="Seconds a generation may run before it is stopped."
    )
    shutdown_grace: int = Field(
        5, ge=0, description="Seconds a stopping server lets streams in progress finish "
        "before it ends them."
    )
    embedding_model: str = Field(
        "all-minilm:latest", description="Embedding model used when a request names none "
        "(where the API allows that) and warmed at startup with NPU_PROXY_WARMUP."
    )
    embedding_device: str = Field("CPU", description="Preferred device for embeddings.")
    max_embedding_inputs: int = Field(
        2048, ge=1, description="Most inputs one embedding request may hold (OpenAI's cap); "
        "more is a 400 naming the cap."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Logging verbosity."
    )

    # --- what the engine needs -----------------------------------------------------
    max_queue: int = Field(
        512, ge=0, description="Requests that may wait per device before 503 (Retry-After)."
    )
    keep_alive: float = Field(
        300.0, description="Default seconds a model stays loaded after use ('5m'; <0 forever)."
    )
    default_model: str = Field(
        "smollm2:135m", description="Model loaded by warm-up and suggested by the docs."
    )
    warmup: bool = Field(
        False, description="Load the default model and generate 16 tokens at startup, "
        "and load the embedding model with one embedding."
    )
    routing: str = Field("token_threshold", description="Routing policy to use, by name.")
    plugins: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Comma-separated plugin names to load; unset loads all installed."
    )
    max_tokens: int = Field(
        2048, ge=0, description="Most tokens a generation produces when the request sets no "
        "limit (finish reason 'length'); 0: up to the end of the context."
    )
    max_parallel: int = Field(
        4, ge=1, description="Concurrent generations per CPU/GPU device (NPU: always 1)."
    )
    generic_tools: bool = Field(
        False, description="Serve tools also for models whose chat template renders none: "
        "a generic tool prompt describes them and JSON answers become calls (0: such "
        "models refuse tools in every dialect)."
    )

    # --- network safety ---------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="When set, every route but /health needs 'Authorization: Bearer "
        "KEY' or 'x-api-key: KEY'."
    )
    allowed_clients: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(_default_clients()),
        description="Comma-separated client addresses/CIDR ranges allowed to connect "
        "(default: loopback, private ranges, link-local; '*' allows all).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host-header names accepted besides loopback names, private "
        "addresses and this machine's names ('*' wildcards; '*' alone accepts all).",
    )
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ORIGINS),
        description="Comma-separated browser origins allowed to call the API: CORS, and "
        "a request with any other Origin gets 403 (except /health*). '*' wildcards; a "
        "':*' port matches digits only.",
    )
    max_body: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes "
        "('32MiB'); larger ones get 413 before parsing."
    )

    # --- slow clients (checked at the connection, before a request exists) --------
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and "
        "headers (from connecting, or from the request's first byte on a kept-alive "
        "connection); slower ones get 408 and are disconnected."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may take to arrive, plus one "
        "second per KiB received; a body trickling slower is cut."
    )
    max_client_connections: int = Field(
        256, ge=1, description="Open connections one client address may hold; one more "
        "gets 503 and is closed at once."
    )

    @field_validator("allowed_clients", "allowed_hosts", "origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _device_list(value)

    @field_validator("allowed_clients")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        from .security import parse_networks

        if value != ["*"]:
            parse_networks(value)
        return value

    @field_validator("max_body", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("max_blob", mode="before")
    @classmethod
    def _blob_size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("device", "embedding_device")
    @classmethod
    def _upper_device(cls, value: str) -> str:
        value = device_name(value)
        if not value:
            raise ValueError("must name a device such as NPU, GPU or CPU")
        return value

    @field_validator("fallback_device")
    @classmethod
    def _fallback(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "auto"):
            return None
        return device_name(value)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("model_path")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins(cls, value: Any) -> Any:
        # An empty NPU_PROXY_PLUGINS means "not set" (load everything), not "load nothing".
        return _device_list(value) or None


def _default_clients() -> tuple[str, ...]:
    from .security import DEFAULT_CLIENTS

    return DEFAULT_CLIENTS


class SettingsError(Exception):
    """Invalid configuration; the message names each offending variable."""


S = TypeVar("S", bound=BaseSettings)


class PluginSettings(BaseSettings):
    """Base class for a plugin's own settings, read from ``NPU_PROXY_*`` like the core's.

    Subclass it, declare fields with defaults and descriptions, and read it once with
    :func:`load_plugin_settings` (in the plugin's registration hook), so an invalid
    value stops startup with the same message shape as the core's variables.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment with ``overrides`` (CLI flags) on top.

    ``None`` overrides are ignored. Raises :class:`SettingsError` naming the variables.
    """
    return load_plugin_settings(Settings, **overrides)


def load_plugin_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` (a :class:`PluginSettings` or :class:`Settings`) from the environment.

    ``None`` overrides are ignored. Raises :class:`SettingsError` naming each offending
    ``NPU_PROXY_*`` variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None

"""Which remote engines to reach, read and validated once at startup.

Two sources, used together: ``NPU_PROXY_UPSTREAMS`` (comma-separated ``name=base-url``
pairs, for the simple case) and the TOML file named by ``NPU_PROXY_UPSTREAMS_FILE``
(one ``[upstreams.NAME]`` table each, with everything an upstream can be given). A
name given twice, a URL that is not http(s), an unknown key or an API-key variable
that is not set stops startup with a :class:`~npu_proxy.settings.SettingsError`
naming the variable and the upstream. Nothing configured: no upstream, nothing changes.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from npu_proxy.engine.names import canonical
from npu_proxy.settings import PluginSettings, SettingsError, load_plugin_settings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class UpstreamSettings(PluginSettings):
    """The plugin's variables (``NPU_PROXY_UPSTREAM*``)."""

    upstreams: str = Field(
        "", description="Comma-separated name=base-url pairs of OpenAI-compatible engines, "
        "e.g. 'lab=http://10.0.0.5:8000/v1'."
    )
    upstreams_file: Path | None = Field(
        None, description="A TOML file of upstreams with keys, model filters, prefixes, "
        "parallelism and timeouts."
    )
    upstream_refresh: float = Field(
        60.0, gt=0, description="Seconds between refreshes of a healthy upstream's models."
    )
    upstream_probe: float = Field(
        5.0, gt=0, description="Seconds before the first probe of an upstream that is down "
        "(doubling after each failed probe, up to 12 times as long)."
    )


class UpstreamConfig(BaseModel):
    """One remote engine. ``url`` is its OpenAI base (``.../v1``; OVMS: ``.../v3``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    #: the environment variable holding the engine's API key (never the key itself)
    api_key_env: str | None = None
    #: the key, read from ``api_key_env`` at startup
    api_key: SecretStr | None = None
    #: shell-style patterns of the engine's model ids to serve; empty: all of them
    models: tuple[str, ...] = ()
    #: put in front of each model's name here (``lab/`` makes ``qwen`` ``lab/qwen``)
    prefix: str = ""
    max_parallel: int = Field(4, ge=1, le=1024)
    connect_timeout: float = Field(5.0, gt=0)
    #: seconds the engine may stay silent: before the first byte and between events
    read_timeout: float = Field(120.0, gt=0)
    #: consecutive failed requests that open the circuit (a failed probe opens it at once)
    failures: int = Field(3, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip().lower()
        if not _NAME.match(value):
            raise ValueError(
                f"upstream name {value!r}: use lower-case letters, digits, '-' and '_'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown_url(value)!r} is not an http(s) URL")
        return value.strip().rstrip("/")

    @property
    def device(self) -> str:
        """The device name routing, headers and ``/health`` show."""
        return f"upstream:{self.name}"

    @property
    def shown_url(self) -> str:
        """The URL without any user or password in it: safe to log and show."""
        return shown_url(self.url)

    def local_name(self, model_id: str) -> str:
        """The canonical name the engine's model ``model_id`` has here (prefix put in
        front). Raises InvalidRequestError when it is not a valid model name."""
        return canonical(self.prefix + model_id)

    def serves(self, model_id: str) -> bool:
        """Whether the engine's model ``model_id`` passes this upstream's filter."""
        return not self.models or any(fnmatch.fnmatchcase(model_id, p) for p in self.models)


def shown_url(url: str) -> str:
    """``url`` with credentials removed (``http://user:pw@host`` -> ``http://host``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _pairs(text: str) -> list[dict[str, Any]]:
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise SettingsError(
                f"invalid configuration: NPU_PROXY_UPSTREAMS: {shown_url(item)!r} is not "
                "name=base-url (e.g. lab=http://10.0.0.5:8000/v1)")
        found.append({"name": name, "url": url})
    return found


def _file(path: Path) -> list[dict[str, Any]]:
    where = "invalid configuration: NPU_PROXY_UPSTREAMS_FILE"
    try:
        data = tomllib.loads(path.expanduser().read_text("utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"upstreams"}
    if unknown:
        raise SettingsError(f"{where}: unknown top-level keys {sorted(unknown)} "
                            "(upstreams go in [upstreams.NAME] tables)")
    tables = data.get("upstreams", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise SettingsError(f"{where}: each upstream is an [upstreams.NAME] table")
    return [{"name": name, **table} for name, table in tables.items()]


def _config(raw: dict[str, Any], source: str) -> UpstreamConfig:
    try:
        config = UpstreamConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'upstream'}: {e['msg']}"
            for e in exc.errors())
        name = str(raw.get("name", "?"))
        raise SettingsError(
            f"invalid configuration: {source}: upstream {name!r}: {problems}") from None
    if raw.get("api_key") is not None:
        raise SettingsError(
            f"invalid configuration: {source}: upstream {config.name!r}: put the key in an "
            "environment variable and name it with api_key_env, not the key itself")
    if config.api_key_env:
        key = os.environ.get(config.api_key_env, "")
        if not key.strip():
            raise SettingsError(
                f"invalid configuration: {source}: upstream {config.name!r}: api_key_env "
                f"names {config.api_key_env}, which is not set")
        config = config.model_copy(update={"api_key": SecretStr(key.strip())})
    return config


def load_upstreams(settings: UpstreamSettings | None = None) -> list[UpstreamConfig]:
    """Every configured upstream, validated; raises SettingsError naming what is wrong."""
    settings = settings or load_plugin_settings(UpstreamSettings)
    raw = [(r, "NPU_PROXY_UPSTREAMS") for r in _pairs(settings.upstreams)]
    if settings.upstreams_file is not None:
        raw += [(r, "NPU_PROXY_UPSTREAMS_FILE") for r in _file(settings.upstreams_file)]
    configs: list[UpstreamConfig] = []
    for entry, source in raw:
        config = _config(entry, source)
        if any(c.name == config.name for c in configs):
            raise SettingsError(
                f"invalid configuration: {source}: upstream {config.name!r} is given twice")
        configs.append(config)
    return configs

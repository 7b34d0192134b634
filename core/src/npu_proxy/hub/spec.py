"""What a pull name means: a catalog alias, an OpenVINO IR repository, or a GGUF file.

- ``tinyllama`` / ``tinyllama:1.1b``: an alias from :mod:`npu_proxy.hub.catalog`.
- ``org/repo`` (tag ``latest`` = the ``main`` revision, any other tag = that revision):
  a repository holding OpenVINO IR, or an ONNX embedding export.
- ``hf.co/org/repo:QUANT`` (or ``huggingface.co/...``): the GGUF file of that
  quantisation in the repository (``latest`` picks Q4_K_M, as Ollama does).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.errors import InvalidRequestError
from ..engine.names import DEFAULT_TAG, parse_model_name
from .catalog import CATALOG, CatalogEntry, Kind

GGUF_HOSTS = ("hf.co", "huggingface.co")
DEFAULT_QUANT = "Q4_K_M"


@dataclass(frozen=True, slots=True)
class PullSpec:
    """A resolved pull: the local ``name``, the ``repo`` and ``revision``, what to fetch."""

    name: str
    repo: str
    revision: str
    kind: Kind | None  # None: decided from the repository's files
    quant: str | None = None
    entry: CatalogEntry | None = None


def resolve_pull_name(name: object) -> PullSpec:
    """Resolve ``name`` (validated like every model name); InvalidRequestError if unusable."""
    parsed = parse_model_name(name)
    canonical = str(parsed)
    entry = CATALOG.get(canonical)
    if entry is not None:
        return PullSpec(canonical, entry.repo, "main", entry.kind, entry=entry)
    if parsed.namespace is None:
        known = sorted({e.name.split(":")[0] for e in CATALOG.values()})
        raise InvalidRequestError(
            f"unknown model '{name}': use an alias ({', '.join(known)}), an OpenVINO "
            "repository as org/repo, or a GGUF repository as hf.co/org/repo:QUANT",
            param="model",
        )
    # Repository ids keep their case on the hub; the local name is lower case.
    original = str(name).strip()
    base = original.rsplit(":", 1)[0] if ":" in original.rsplit("/", 1)[-1] else original
    parts = base.split("/")
    host = parts[0].lower() if len(parts) == 3 else None
    if host is not None and host not in GGUF_HOSTS:
        raise InvalidRequestError(
            f"only Hugging Face repositories can be pulled ({', '.join(GGUF_HOSTS)})",
            param="model",
        )
    repo = "/".join(parts[-2:])
    if host is not None:
        quant = DEFAULT_QUANT if parsed.tag == DEFAULT_TAG else parsed.tag.upper()
        return PullSpec(canonical, repo, "main", "gguf", quant=quant)
    revision = "main" if parsed.tag == DEFAULT_TAG else parsed.tag
    return PullSpec(canonical, repo, revision, None)

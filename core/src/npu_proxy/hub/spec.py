"""What a pull name means: an alias a format registered, a repository, or a GGUF file.

- ``tinyllama`` / ``tinyllama:1.1b``: an alias (:class:`~npu_proxy.engine.formats.HubAlias`)
  that a registered model format offers.
- ``org/repo`` (tag ``latest`` = the ``main`` revision, any other tag = that revision):
  a repository; the registered formats decide from its files what it holds.
- ``hf.co/org/repo:QUANT`` (or ``huggingface.co/...``): Ollama's spelling for the GGUF
  file of that quantisation in the repository (``latest`` asks for Q4_K_M, as Ollama
  does); the format registered as ``gguf`` picks the file.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..engine.errors import InvalidRequestError
from ..engine.formats import HubAlias, HubRequest
from ..engine.names import DEFAULT_TAG, parse_model_name

GGUF_HOSTS = ("hf.co", "huggingface.co")
#: The format an ``hf.co/org/repo:QUANT`` name asks for, and its default quantisation.
GGUF_FORMAT = "gguf"
DEFAULT_QUANT = "Q4_K_M"


def resolve_pull_name(name: object, aliases: Mapping[str, HubAlias]) -> HubRequest:
    """Resolve ``name`` (validated like every model name); InvalidRequestError if unusable."""
    parsed = parse_model_name(name)
    canonical = str(parsed)
    alias = aliases.get(canonical)
    if alias is not None:
        return HubRequest(alias.name, alias.repo, "main", alias.format, alias=alias)
    if parsed.namespace is None:
        known = sorted({a.name.split(":")[0] for a in aliases.values()})
        choices = f"an alias ({', '.join(known)}), " if known else ""
        raise InvalidRequestError(
            f"unknown model '{name}': use {choices}a repository as org/repo, or a GGUF "
            "repository as hf.co/org/repo:QUANT",
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
        return HubRequest(canonical, repo, "main", GGUF_FORMAT, variant=quant)
    revision = "main" if parsed.tag == DEFAULT_TAG else parsed.tag
    return HubRequest(canonical, repo, revision)

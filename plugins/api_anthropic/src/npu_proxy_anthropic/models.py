"""Which local model serves a requested name.

Anthropic clients name Anthropic models. Order of lookup:

1. the first ``NPU_PROXY_ANTHROPIC_MODEL_MAP`` rule whose pattern matches;
2. a local model of exactly that name (``smollm2:135m`` works as itself);
3. for ``claude*`` names, the default model, so Claude Code works unconfigured;
4. otherwise :class:`ModelNotFoundError` naming the requested model.
"""

from __future__ import annotations

import fnmatch

from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError
from npu_proxy.engine.names import canonical
from npu_proxy.engine.store import ModelStore

from .settings import MapRule


def _echoable(name: str) -> bool:
    return len(name) <= 200 and name.isprintable()


class MappedModelNotFoundError(ModelNotFoundError):
    """The requested name maps to a model that is not installed."""

    def __init__(self, requested: str, target: str) -> None:
        super().__init__(target)
        self.message = (
            f"model '{requested}' maps to '{target}', which is not installed; "
            f"pull it or change NPU_PROXY_ANTHROPIC_MODEL_MAP"
        )
        self.args = (self.message,)


class ModelResolver:
    """Turns a requested model name into the canonical name of a local model."""

    def __init__(self, store: ModelStore, rules: tuple[MapRule, ...], default: str) -> None:
        self.store = store
        self.rules = rules
        self.default = default

    def resolve(self, requested: str) -> str:
        """The local model for ``requested``; raises ModelNotFoundError/InvalidRequestError."""
        if not _echoable(requested):
            canonical(requested)  # raises InvalidRequestError naming the problem
        lowered = requested.strip().lower()
        for pattern, target in self.rules:
            if fnmatch.fnmatchcase(lowered, pattern.lower()):
                return self._installed(requested, target)
        try:
            return self.store.resolve(requested).name
        except ModelNotFoundError:
            if not lowered.startswith("claude"):
                raise
        except InvalidRequestError:
            # Anthropic names may carry characters local names cannot ("...[1m]"), but
            # the name is echoed in the reply: control characters and lone surrogates
            # stay refused.
            if not (lowered.startswith("claude") and _echoable(requested)):
                raise
        return self._installed(requested, self.default)

    def _installed(self, requested: str, target: str) -> str:
        try:
            return self.store.resolve(target).name
        except ModelNotFoundError:
            raise MappedModelNotFoundError(requested, target) from None

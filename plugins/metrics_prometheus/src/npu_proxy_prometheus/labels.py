"""Bounded label values: whatever clients send, the number of time series stays finite.

Model labels are the canonical names of models the server's model store knows; any
other name folds into :data:`OTHER`. Device labels are the engine's devices. Endpoint
labels are route templates, which the core already guarantees (``unmatched`` for a
request that matched no route).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npu_proxy.engine.errors import EngineError

if TYPE_CHECKING:
    from npu_proxy.context import ServerContext

#: The one label value every unknown model or device folds into.
OTHER = "other"


class LabelBounds:
    """Maps raw names from events to bounded label values.

    Until :meth:`bind` gives it a server context it knows no model or device, and
    every name maps to :data:`OTHER`.
    """

    def __init__(self) -> None:
        self._ctx: ServerContext | None = None

    def bind(self, ctx: ServerContext) -> None:
        """Use ``ctx``'s model store and engine as the sources of known names."""
        self._ctx = ctx

    @property
    def devices(self) -> list[str]:
        """The engine's devices (empty while unbound)."""
        return sorted(self._ctx.engine.backends) if self._ctx is not None else []

    def model(self, name: str) -> str:
        """The canonical name if the model store knows ``name``, else :data:`OTHER`."""
        if self._ctx is None:
            return OTHER
        try:
            return self._ctx.store.resolve(name).name
        except EngineError:
            # Unknown, deleted, or not a valid model name at all.
            return OTHER

    def device(self, name: str) -> str:
        """``name`` if the engine drives such a device, else :data:`OTHER`."""
        if self._ctx is None or name not in self._ctx.engine.backends:
            return OTHER
        return name

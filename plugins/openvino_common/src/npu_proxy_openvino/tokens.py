"""Token counting with a model's own tokenizer, without loading the model on a device.

``openvino_genai.Tokenizer`` on an IR folder loads in tens of milliseconds (on a GGUF
file it converts the vocabulary first, about 2 s), and runs on the CPU only.
"""

from __future__ import annotations

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

    return openvino_genai.Tokenizer(str(folder))

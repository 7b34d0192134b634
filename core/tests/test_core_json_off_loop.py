"""``encode_json``: the bytes JSONResponse sends, made one leaf at a time."""

from __future__ import annotations

import math

import pytest
from npu_proxy.web import encode_json
from starlette.responses import JSONResponse


@pytest.mark.parametrize("value", [
    {"object": "list", "data": [{"index": 0, "embedding": [0.25, -1.5e-7, 3.0]},
                                {"index": 1, "embedding": "AAAA"}], "usage": {"n": 2}},
    {"embeddings": [[1.0, 2.0], [], [3.5]], "ünï": "çödé ✓", "none": None, "t": True},
    [], {}, [[]], "text", 42, [{"a": [[1, 2], [3]]}],
])
def test_the_bytes_equal_json_response(value: object) -> None:
    assert encode_json(value) == JSONResponse(value).body


def test_what_json_response_refuses_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_json({"v": [math.nan]})
    with pytest.raises(TypeError):
        encode_json({1: "a"})

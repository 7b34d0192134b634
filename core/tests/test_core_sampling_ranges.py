"""The one owner of the sampling options' ranges: ``SamplingOptions.checked``."""

from __future__ import annotations

import math
from typing import Any

import pytest
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.types import COUNT_MAX, SEED_MAX, TOP_K_MAX, SamplingOptions


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5), ("temperature", math.nan), ("temperature", math.inf),
        ("top_p", 1.5), ("top_p", -0.1), ("top_p", math.nan), ("top_p", 0.0),
        ("min_p", 1.01), ("min_p", -1.0), ("min_p", 1.0),
        ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
        ("repetition_penalty", math.inf),
        ("presence_penalty", 2.5), ("frequency_penalty", -100.0),
        ("frequency_penalty", math.nan),
        ("max_tokens", -1), ("max_tokens", 0), ("top_k", -1), ("num_ctx", 0),
        ("seed", SEED_MAX + 1), ("seed", 2**70),
    ],
)
def test_out_of_range_values_are_refused_naming_the_option(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        SamplingOptions(**{field: value}).checked()
    assert refused.value.param == field
    assert field in refused.value.message


def test_huge_counts_are_clamped_and_a_negative_seed_is_random() -> None:
    checked = SamplingOptions(max_tokens=10**30, num_ctx=2**40, top_k=10**30, seed=-1).checked()
    assert (checked.max_tokens, checked.num_ctx, checked.top_k) == (COUNT_MAX, COUNT_MAX,
                                                                    TOP_K_MAX)
    assert checked.seed is None
    assert SamplingOptions(seed=-(2**70)).checked().seed is None


def test_values_in_range_are_kept_as_they_are() -> None:
    options = SamplingOptions(
        max_tokens=1, temperature=0.0, top_p=1e-9, top_k=0, min_p=0.999, seed=SEED_MAX,
        repetition_penalty=1e-9, presence_penalty=-2.0, frequency_penalty=2.0, num_ctx=1,
        stop=("END",),
    )
    assert options.checked() == options
    assert SamplingOptions().checked() == SamplingOptions()


def test_an_empty_stop_string_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        SamplingOptions(stop=("",)).checked()
    assert refused.value.param == "stop"

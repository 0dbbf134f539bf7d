"""The checks of values at the boundary: each accepts what it states and refuses the rest in one sentence."""

import math

import numpy as np
import pytest

from mivae.errors import InputError, MivaeError, check_choice, check_number, check_whole


def test_check_whole_returns_whole_numbers_from_its_lower_bound_and_the_exceptions_allowed():
    assert check_whole("seed", 0) == 0
    assert check_whole("seed", np.int64(7)) == 7
    assert check_whole("batch_size", "auto", 1, also=("auto",)) == "auto"
    assert check_whole("limit", None, 1, also=(None,)) is None


@pytest.mark.parametrize(
    "value, low, also, message",
    [
        (-1, 0, (), "seed must be a whole number of at least 0; got -1."),
        (0, 1, ("auto",), "seed must be a whole number of at least 1 or 'auto'; got 0."),
        (2.0, 0, (), "seed must be a whole number of at least 0; got 2.0."),  # never silently converted
        (True, 0, (), "seed must be a whole number of at least 0; got True."),
        ("big", 1, ("auto", None), "seed must be a whole number of at least 1, 'auto' or None; got 'big'."),
        (None, 1, ("auto",), "seed must be a whole number of at least 1 or 'auto'; got None."),
        (np.array([3, 4]), 1, ("auto",), "seed must be a whole number of at least 1 or 'auto'; got array([3, 4])."),
    ],
)
def test_check_whole_refuses_in_one_sentence(value, low, also, message):
    with pytest.raises(MivaeError) as caught:
        check_whole("seed", value, low, also=also)
    assert str(caught.value) == message


def test_check_number_honours_open_and_closed_ends_and_refuses_nan():
    assert check_number("f", 0.0, 0, 1, low_open=False, high_open=True) == 0.0
    assert check_number("lr", "auto", 0, math.inf, also=("auto",)) == "auto"
    for value, message in [(1.0, "f must be a number in [0, 1); got 1.0."), (math.nan, "f must be a number in [0, 1)")]:
        with pytest.raises(MivaeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            check_number("f", value, 0, 1, low_open=False, high_open=True)
    with pytest.raises(MivaeError, match=r"lr must be a number in \(0, inf\) or 'auto'; got 0"):
        check_number("lr", 0, 0, math.inf, high_open=True, also=("auto",))


def test_check_choice_names_every_choice_and_raises_the_error_asked_for():
    assert check_choice("precision", "bf16", ("auto", "bf16", "fp32")) == "bf16"
    with pytest.raises(InputError) as caught:
        check_choice("precision", "fp16", ("auto", "bf16", "fp32"), error=InputError)
    assert str(caught.value) == "precision must be auto, bf16 or fp32; got 'fp16'."
    with pytest.raises(MivaeError, match="got 3"):
        check_choice("precision", 3, ("auto", "bf16", "fp32"))

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mivae.errors import MivaeError
from mivae.images.corruption import (
    Corrupted,
    corrupt,
    corruption_mask,
    draw_mask,
    expected_missing_fraction,
    fill,
    number_of_draws,
    pixel_means,
)

methods = st.sampled_from(["random-pixels", "vertical-lines"])
levels = st.floats(0.0, 0.99)
shapes = st.tuples(st.integers(8, 40), st.integers(8, 40))
seeds = st.integers(0, 2**32 - 1)


def _units(method, shape):
    return shape[0] * shape[1] if method == "random-pixels" else shape[1]


def test_number_of_draws_follows_section_3_2():
    # D = round(-p ln(1 - cl)): 784 pixels at 50 % need 543 draws, 28 columns need 19.
    assert number_of_draws(0.5, 784) == round(784 * math.log(2)) == 543
    assert number_of_draws(0.9, 784) == 1805
    assert number_of_draws(0.5, 28) == 19
    assert number_of_draws(0.0, 784) == 0


@given(method=methods, level=levels, shape=shapes)
def test_expected_fraction_is_within_half_a_unit_of_the_level(method, level, shape):
    # Rounding D moves the expected fraction by at most about half of one pixel or column.
    p = _units(method, shape)
    assert abs(expected_missing_fraction(method, level, shape) - level) <= 0.51 / p


@settings(max_examples=60, deadline=None)
@given(method=methods, level=levels, shape=shapes, seed=seeds)
def test_realised_fraction_is_within_tolerance_of_the_level(method, level, shape, seed):
    n = 300
    mask = corruption_mask(n, shape, method, level, seed=seed, split="test")
    p = _units(method, shape)
    # Rounding of D, plus five standard deviations of the mean over n * p units.
    tolerance = 0.51 / p + 5 * math.sqrt(0.25 / (n * p))
    assert abs(mask.mean() - level) <= tolerance


@settings(max_examples=40, deadline=None)
@given(level=levels, shape=shapes, seed=seeds, exact=st.booleans())
def test_vertical_lines_masks_are_whole_columns(level, shape, seed, exact):
    mask = corruption_mask(50, shape, "vertical-lines", level, seed=seed, split="train", exact=exact)
    assert mask.shape == (50, *shape)
    assert np.array_equal(mask, np.broadcast_to(mask[:, :1, :], mask.shape))


@settings(max_examples=40, deadline=None)
@given(method=methods, level=st.floats(0.1, 0.99), shape=shapes, seed=st.integers(0, 2**31))
def test_same_seed_same_mask_other_seed_other_mask(method, level, shape, seed):
    first = corruption_mask(50, shape, method, level, seed=seed, split="test")
    assert np.array_equal(first, corruption_mask(50, shape, method, level, seed=seed, split="test"))
    assert not np.array_equal(first, corruption_mask(50, shape, method, level, seed=seed + 1, split="test"))
    assert not np.array_equal(first, corruption_mask(50, shape, method, level, seed=seed, split="val"))


@settings(max_examples=40, deadline=None)
@given(method=methods, level=levels, shape=shapes, seed=seeds)
def test_exact_masks_have_exactly_round_cl_p_units(method, level, shape, seed):
    mask = corruption_mask(40, shape, method, level, seed=seed, split="test", exact=True)
    p = _units(method, shape)
    per_image = mask.reshape(40, -1).sum(axis=1)
    assert np.all(per_image == round(level * p) * (shape[0] * shape[1] // p))


def test_an_images_mask_does_not_depend_on_how_many_are_corrupted():
    # Crosses the 4096-image chunk boundary: a slice of the test set sees the same masks.
    full = corruption_mask(5000, (6, 6), "random-pixels", 0.5, seed=7, split="test")
    part = corruption_mask(4100, (6, 6), "random-pixels", 0.5, seed=7, split="test")
    assert np.array_equal(full[:4100], part)
    assert not np.array_equal(full[:904], full[4096:5000])  # chunks are not copies of each other


def test_mnist_sized_corruption_hits_the_thesis_levels():
    for method in ("random-pixels", "vertical-lines"):
        for level in (0.5, 0.7, 0.9):
            mask = corruption_mask(10_000, (28, 28), method, level, seed=0, split="test")
            assert abs(mask.mean() - level) < (0.002 if method == "random-pixels" else 0.02)


@pytest.mark.parametrize("level", [-0.1, 1.0, 1.5, float("nan"), "high", None])
def test_level_outside_zero_one_is_a_clear_error(level):
    with pytest.raises(MivaeError, match="corruption level must be"):
        corrupt(np.zeros((2, 28, 28)), "random-pixels", level, seed=0, split="test")


def test_unknown_method_is_a_clear_error():
    with pytest.raises(
        MivaeError, match="unknown corruption method 'blocks'; expected one of random-pixels, vertical-lines"
    ):
        corrupt(np.zeros((2, 28, 28)), "blocks", 0.5, seed=0, split="test")


def test_images_must_be_three_dimensional():
    with pytest.raises(MivaeError, match=r"images must have shape \(N, height, width\); got shape \(2, 784\)"):
        corrupt(np.zeros((2, 784)), "random-pixels", 0.5, seed=0, split="test")


def test_corrupt_hides_missing_values_and_keeps_observed_ones():
    rng = np.random.default_rng(0)
    images = rng.random((20, 28, 28), dtype=np.float32)
    c = corrupt(images, "random-pixels", 0.7, seed=1, split="test")
    assert np.array_equal(np.isnan(c.values), c.mask)
    assert np.array_equal(c.values[~c.mask], images[~c.mask])
    assert abs(c.missing_fraction - 0.7) < 0.02


def test_fill_policies():
    values = np.array([[[0.2, np.nan], [np.nan, 0.4]], [[0.6, 0.8], [np.nan, np.nan]]], dtype=np.float32)
    c = Corrupted(values, np.isnan(values), "random-pixels", 0.5)
    np.testing.assert_allclose(fill(c, "white")[0], [[0.2, 1.0], [1.0, 0.4]])
    np.testing.assert_allclose(fill(c, "zero")[1], [[0.6, 0.8], [0.0, 0.0]])
    means = pixel_means(c)
    # Pixel (1, 0) is never observed: it gets the mean of all observed values, 0.5.
    np.testing.assert_allclose(means, [[0.4, 0.8], [0.5, 0.4]])
    np.testing.assert_allclose(fill(c, "mean", means)[1], [[0.6, 0.8], [0.5, 0.4]])
    with pytest.raises(MivaeError, match="needs per-pixel training means"):
        fill(c, "mean")
    with pytest.raises(MivaeError, match="unknown fill policy 'grey'"):
        fill(c, "grey")


def test_draw_mask_uses_only_the_generator_it_is_given():
    a = draw_mask(10, (28, 28), "random-pixels", 0.5, np.random.default_rng(3))
    b = draw_mask(10, (28, 28), "random-pixels", 0.5, np.random.default_rng(3))
    assert np.array_equal(a, b)

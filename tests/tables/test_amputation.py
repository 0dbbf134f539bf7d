import math
import warnings

import numpy as np
import pytest

from mivae.tables.amputation import MECHANISMS, ampute, fit_intercepts, rmse_missing, sigmoid


@pytest.fixture(scope="module")
def table():
    """2000 rows of 10 correlated Gaussian columns with different scales and offsets."""
    rng = np.random.default_rng(123)
    latent = rng.standard_normal((2000, 3))
    X = latent @ rng.standard_normal((3, 10)) + 0.5 * rng.standard_normal((2000, 10))
    return X * np.linspace(0.1, 100.0, 10) + np.arange(10)


def welch_t(values, in_group):
    """Returns Welch's t statistic of the mean of `values` inside vs outside `in_group`."""
    a, b = values[in_group], values[~in_group]
    return (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_mcar_reaches_the_rate_in_every_column(table, rate):
    mask = ampute(table, rate, "mcar", seed=1)
    assert mask.shape == table.shape and mask.dtype == bool
    assert abs(mask.mean() - rate) < 0.01  # sd of the overall fraction is about 0.0035
    assert np.all(np.abs(mask.mean(axis=0) - rate) < 0.05)  # per column, sd about 0.011


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_rate_zero_leaves_everything_observed(table, mechanism):
    assert not ampute(table, 0.0, mechanism).any()


@pytest.mark.parametrize("observed_fraction, n_observed", [(0.1, 1), (0.3, 3), (0.01, 1)])
def test_mar_keeps_the_observed_columns_complete_and_reaches_the_rate(table, observed_fraction, n_observed):
    mask = ampute(table, 0.3, "mar", seed=2, observed_fraction=observed_fraction)
    per_column = mask.mean(axis=0)
    assert (per_column == 0).sum() == n_observed
    # The other columns each carry rate * d / (d - n_observed) on average.
    assert np.all(np.abs(per_column[per_column > 0] - 0.3 * 10 / (10 - n_observed)) < 0.05)
    assert abs(mask.mean() - 0.3) < 0.015


def test_mar_accepts_the_largest_feasible_rate_it_reports(table):
    mask = ampute(table, 0.95 * 9 / 10, "mar", seed=5)  # 0.855 * 10 / 9 rounds just above 0.95
    assert abs(mask.mean() - 0.855) < 0.015


def test_mar_missingness_depends_on_the_observed_columns_and_mcar_does_not(table):
    mar = ampute(table, 0.3, "mar", seed=3)  # one observed column drives every other column
    (observed,) = np.flatnonzero(~mar.any(axis=0))
    for j in np.flatnonzero(mar.any(axis=0)):
        # The logit is +-1 standardised unit of the observed column: a strong shift in its mean.
        assert abs(welch_t(table[:, observed], mar[:, j])) > 10
    mcar = ampute(table, 0.3, "mcar", seed=3)
    for j in range(1, 10):
        assert abs(welch_t(table[:, 0], mcar[:, j])) < 4


def test_mnar_hides_the_large_values_of_each_column(table):
    mask = ampute(table, 0.4, "mnar", seed=4)
    assert np.all(np.abs(mask.mean(axis=0) - 0.4) < 0.05)
    for j in range(table.shape[1]):
        missing_mean, observed_mean = table[mask[:, j], j].mean(), table[~mask[:, j], j].mean()
        assert missing_mean > observed_mean
        assert welch_t(table[:, j], mask[:, j]) > 10


def test_fit_intercepts_hits_the_target_mean_probability():
    logits = np.random.default_rng(0).standard_normal((500, 4)) * np.array([0.0, 1.0, 3.0, 30.0])
    for target in (0.01, 0.5, 0.95):
        b = fit_intercepts(logits, target)
        np.testing.assert_allclose(sigmoid(logits + b).mean(axis=0), target, atol=1e-9)
    assert fit_intercepts(logits, 0.5)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_same_seed_same_mask_and_other_seed_other_mask(table, mechanism):
    first = ampute(table, 0.3, mechanism, seed=7)
    np.testing.assert_array_equal(first, ampute(table, 0.3, mechanism, seed=7))
    assert (first != ampute(table, 0.3, mechanism, seed=8)).mean() > 0.05


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_constant_columns_give_no_warning_and_keep_the_rate(mechanism):
    X = np.ones((2000, 4)) * np.array([5.0, -1.0, 0.0, 2.0])  # every column constant: std 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 would warn before it produced a NaN
        mask = ampute(X, 0.2, mechanism, seed=0)
    assert abs(mask.mean() - 0.2) < 0.03


def test_integer_table_is_accepted(table):
    X = np.rint(table).astype(int)
    assert abs(ampute(X, 0.25, "mnar").mean() - 0.25) < 0.02


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(X=[[1.0, float("nan")], [2.0, 3.0]], rate=0.2), ["X", "NaN"]),
        (dict(X=[1.0, 2.0, 3.0], rate=0.2), ["X", "2-D"]),
        (dict(X=[["a", "b"], ["c", "d"]], rate=0.2), ["X", "numeric"]),
        (dict(rate=-0.1), ["rate", "[0, 1)", "-0.1"]),
        (dict(rate=1.0), ["rate", "[0, 1)", "1.0"]),
        (dict(rate="abc"), ["rate", "number", "'abc'"]),
        (dict(rate=True), ["rate", "number", "True"]),
        (dict(rate=float("nan")), ["rate", "nan"]),
        (dict(rate=0.2, mechanism="foo"), ["mechanism", "mcar, mar, mnar", "'foo'"]),
        (dict(rate=0.2, observed_fraction=0.0), ["observed_fraction", "(0, 1)"]),
        (dict(rate=0.2, observed_fraction=1.0), ["observed_fraction", "(0, 1)"]),
        # 9 amputed columns of 10 would each need 0.9 * 10 / 9 = 1.0 > 0.95: at most 0.95 * 9 / 10.
        (dict(rate=0.9, mechanism="mar"), ["rate 0.9", "'mar'", "0.855"]),
        # d = 1: the one column is always observed, so no positive rate is feasible.
        (dict(X=np.zeros((5, 1)), rate=0.1, mechanism="mar"), ["rate 0.1", "'mar'", "is 0"]),
    ],
)
def test_bad_input_raises_a_value_error_naming_it(table, kwargs, names):
    kwargs = {"X": table, **kwargs}
    with pytest.raises(ValueError) as error:
        ampute(**kwargs)
    for name in names:
        assert name in str(error.value)


def test_rmse_missing_on_a_hand_computed_example():
    X_true = np.array([[1.0, 2.0], [3.0, 6.0], [2.0, 4.0], [2.0, 4.0]])  # column std: sqrt(0.5), sqrt(2)
    X_imputed = np.array([[3.0, 99.0], [3.0, 7.0], [2.0, 4.0], [-50.0, 4.0]])  # observed entries ignored
    mask = np.array([[True, False], [False, True], [True, True], [False, False]])
    # Missing errors: 2 / sqrt(0.5), 1 / sqrt(2), 0, 0 -> squares 8, 0.5, 0, 0 over 4 entries.
    assert rmse_missing(X_true, X_imputed, mask) == pytest.approx(math.sqrt(8.5 / 4))
    assert rmse_missing(X_true, X_imputed, mask, scale=[1.0, 2.0]) == pytest.approx(math.sqrt(4.25 / 4))


def test_rmse_missing_is_zero_for_a_perfect_imputation_and_scales_constant_columns_by_one(table):
    mask = ampute(table, 0.3, "mcar")
    assert rmse_missing(table, table.copy(), mask) == 0.0
    X_true = np.full((3, 2), 7.0)  # constant: std 0 replaced by 1
    assert rmse_missing(X_true, X_true + 2.0, np.ones((3, 2), dtype=bool)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "mask, imputed_shape, scale, name",
    [
        (np.zeros((3, 2), dtype=bool), (3, 2), None, "mask"),
        (np.ones((3, 2), dtype=bool), (2, 3), None, "shape"),
        (np.ones((2, 2), dtype=bool), (3, 2), None, "shape"),
        (np.ones((3, 2), dtype=bool), (3, 2), [1.0, 0.0], "scale"),
    ],
)
def test_rmse_missing_refuses_bad_input(mask, imputed_shape, scale, name):
    with pytest.raises(ValueError, match=name):
        rmse_missing(np.arange(6.0).reshape(3, 2), np.zeros(imputed_shape), mask, scale)

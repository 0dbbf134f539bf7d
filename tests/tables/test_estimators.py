"""The scikit-learn estimators of mivae.tables.estimators: VAEImputer, MIWAEImputer, NotMIWAEImputer and
MultipleImputationClassifier.

In five parts: scikit-learn's own estimator suite; the contract every imputer shares; imputation
quality against column means on a table with known truths; mixed-type DataFrames; and the
multiple-imputation classifier inside Pipeline, cross_val_score and GridSearchCV.
"""

import itertools
import re
import warnings
from copy import copy as shallow_copy
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (makes IterativeImputer importable)
from sklearn.impute import IterativeImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mivae.hardware import cores
from mivae.models.distributions import factor_observed_log_density
from mivae.models.tabular import TabularVAE
from mivae.tables.amputation import ampute, rmse_missing
from mivae.tables.estimators import (
    MIWAEImputer,
    MultipleImputationClassifier,
    NotMIWAEImputer,
    VAEImputer,
    auto_batch,
    auto_lr,
    auto_steps,
)

IMPUTERS = (VAEImputer, MIWAEImputer, NotMIWAEImputer)
FAST = dict(max_epochs=3, hidden=(16,), random_state=0)  # a few epochs of a small net: the contract, not quality
FAST_MIWAE = dict(importance_samples=5, imputation_samples=20)  # K in training and proposals per row in imputation


def fast(Imputer, **params):
    """Returns an imputer of class `Imputer` small enough to train in well under a second, `params` overriding."""
    return Imputer(**{**FAST, **(FAST_MIWAE if issubclass(Imputer, MIWAEImputer) else {}), **params})


# --- 1. scikit-learn's estimator suite ------------------------------------------------------------------------

# Checks that cannot apply to an estimator, by class name, each with the reason. Every check of the
# suite applies to all four estimators today, so none is excused: a failing check is a bug to fix.
# (The array-API check skips itself, once per estimator, unless SCIPY_ARRAY_API is set; that is no failure.)
NOT_APPLICABLE = {
    "VAEImputer": {},
    "MIWAEImputer": {},
    "NotMIWAEImputer": {},
    "MultipleImputationClassifier": {},
}


@parametrize_with_checks(
    [
        fast(VAEImputer),
        fast(MIWAEImputer),
        fast(NotMIWAEImputer),
        MultipleImputationClassifier(imputer=fast(VAEImputer), n_imputations=2, random_state=0),
    ],
    expected_failed_checks=lambda estimator: NOT_APPLICABLE[type(estimator).__name__],
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# --- 2. The contract every imputer shares ---------------------------------------------------------------------


class Table(NamedTuple):
    complete: np.ndarray  # (n, d) the truth
    mask: np.ndarray  # (n, d) bool, True = missing
    missing: np.ndarray  # (n, d) the truth with NaN where mask


def correlated_table(n, seed, d=6, noise=0.1, rate=0.3):
    """Returns a Table of n rows: d columns driven by 2 latent factors plus small noise, `rate` of entries MCAR."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2)) @ rng.standard_normal((2, d)) + noise * rng.standard_normal((n, d))
    mask = ampute(X, rate, "mcar", seed=seed)
    return Table(X, mask, np.where(mask, np.nan, X))


@pytest.fixture(scope="module")
def table():
    return correlated_table(200, seed=1)


@pytest.fixture(scope="module", params=IMPUTERS, ids=lambda c: c.__name__)
def fitted(request, table):
    """Each imputer, fitted once on the shared table; tests must not refit it."""
    return fast(request.param, max_epochs=20).fit(table.missing)


def test_the_shared_table_has_observed_and_missing_entries_in_every_column(table):
    assert 0.25 < table.mask.mean() < 0.35
    assert table.mask.any(axis=0).all() and (~table.mask).any(axis=0).all()


def test_transform_keeps_observed_entries_exactly_and_fills_every_missing_one(fitted, table):
    out = fitted.transform(table.missing)
    assert isinstance(out, np.ndarray) and out.shape == table.complete.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out[~table.mask], table.complete[~table.mask])
    assert not np.isnan(out).any()
    # the imputations come from the model, not a constant fill: they vary within every column
    assert all(np.unique(out[table.mask[:, j], j]).size > 1 for j in range(out.shape[1]))


def test_every_sampled_copy_keeps_observed_entries_and_the_copies_differ_on_missing_ones(fitted, table):
    copies = fitted.sample(table.missing, n_imputations=4)
    assert isinstance(copies, list) and len(copies) == 4
    for copy in copies:
        assert copy.shape == table.complete.shape and not np.isnan(copy).any()
        np.testing.assert_array_equal(copy[~table.mask], table.complete[~table.mask])
    for a, b in itertools.combinations(copies, 2):
        assert np.mean(a[table.mask] != b[table.mask]) > 0.99  # continuous draws: essentially never equal
    single = fitted.transform(table.missing)
    assert all(np.mean(copy[table.mask] != single[table.mask]) > 0.99 for copy in copies)


def test_transform_and_sample_never_refit(fitted, table):
    state = {k: v.clone() for k, v in fitted.model_.state_dict().items()}
    model, schema, history = fitted.model_, fitted.schema_, fitted.history_
    first, first_copies = fitted.transform(table.missing), fitted.sample(table.missing, 3)
    shifted = table.missing[:50] * 10 + 5  # a table with other statistics must not rescale the model
    fitted.transform(shifted)
    fitted.sample(shifted, 2)
    np.testing.assert_array_equal(fitted.transform(table.missing), first)
    for a, b in zip(fitted.sample(table.missing, 3), first_copies):
        np.testing.assert_array_equal(a, b)  # an int random_state: the same copies on every call
    assert fitted.model_ is model and fitted.schema_ is schema and fitted.history_ is history
    after = fitted.model_.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_a_row_is_imputed_the_same_alone_or_within_the_table(fitted, table):
    whole = fitted.transform(table.missing)
    rows = np.flatnonzero(table.mask.any(axis=1))[:5]
    for i in rows:
        np.testing.assert_allclose(fitted.transform(table.missing[i : i + 1])[0], whole[i], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fitted.transform(table.missing[:17]), whole[:17], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["transform", "sample"])
def test_a_feature_count_mismatch_names_both_counts(fitted, table, method):
    with pytest.raises(ValueError) as error:
        getattr(fitted, method)(table.missing[:, :4])
    message = str(error.value)
    assert re.search(r"\b4\b", message) and re.search(r"\b6\b", message), message


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_the_same_random_state_gives_the_same_imputations_and_another_gives_other_draws(Imputer, table):
    a, b, c = (fast(Imputer, max_epochs=5, random_state=seed).fit(table.missing) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.transform(table.missing), b.transform(table.missing))
    copies_a, copies_b, copies_c = (e.sample(table.missing, 3) for e in (a, b, c))
    for x, y in zip(copies_a, copies_b):
        np.testing.assert_array_equal(x, y)
    for x, z in zip(copies_a, copies_c):
        assert np.mean(x[table.mask] != z[table.mask]) > 0.99
    assert np.mean(a.transform(table.missing)[table.mask] != c.transform(table.missing)[table.mask]) > 0.99


@pytest.mark.parametrize("n_imputations", [0, -1, 2.5, True])
def test_sample_refuses_a_count_that_is_not_a_positive_whole_number(fitted, table, n_imputations):
    with pytest.raises(ValueError, match="n_imputations") as error:
        fitted.sample(table.missing, n_imputations=n_imputations)
    assert repr(n_imputations) in str(error.value)


def test_the_automatic_batch_grows_with_the_rows_from_64_to_256():
    assert [auto_batch(n) for n in (10, 5_000, 23_000, 40_000, 90_000, 900_000, 10**8)] == [
        64,
        64,
        64,
        128,
        256,
        256,
        256,
    ]


def test_the_automatic_budget_is_20000_steps_or_3_million_rows_worth_where_fewer():
    assert [auto_steps(b) for b in (64, 128, 150, 151, 256, 512)] == [20_000, 20_000, 20_000, 19_868, 11_719, 5_860]


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_the_step_budget_ends_training_at_its_last_step_in_the_middle_of_an_epoch(Imputer):
    X = correlated_table(2_000, seed=3).missing  # 1,800 training rows: 29 steps of 64 per epoch
    imputer = fast(Imputer, max_epochs=50, max_steps=40, validation_fraction=0.1, patience=50).fit(X)
    assert (imputer.batch_size_, len(imputer.history_.train_loss), imputer.steps_) == (64, 2, 40)
    assert len(imputer.history_.val_score) == 2  # the part epoch is scored as any other
    unbounded = fast(Imputer, max_epochs=4, max_steps=None, patience=50).fit(X)
    assert len(unbounded.history_.train_loss) == 4 and unbounded.steps_ == 4 * 29
    with pytest.raises(ValueError, match="max_steps must be a whole number of at least 1, 'auto' or None; got 0"):
        fast(Imputer, max_steps=0).fit(X)
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1 or 'auto'; got 'big'"):
        fast(Imputer, batch_size="big").fit(X)


def test_the_automatic_learning_rate_grows_with_the_square_root_of_the_batch():
    assert [auto_lr(b) for b in (64, 256, 1024)] == pytest.approx([1e-3, 2e-3, 4e-3], rel=1e-12)
    X = correlated_table(2_000, seed=3).missing
    assert fast(MIWAEImputer, batch_size=256).fit(X).lr_ == pytest.approx(2e-3, rel=1e-12)
    assert fast(MIWAEImputer, batch_size=256, lr=0.01).fit(X).lr_ == 0.01
    with pytest.raises(ValueError, match="lr must be a number in \\(0, inf\\) or 'auto'; got 'fast'"):
        fast(MIWAEImputer, lr="fast").fit(X)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_the_rate_falls_linearly_to_zero_over_the_budget_only_where_the_budget_ends_training(Imputer, monkeypatch):
    from mivae.tables import estimators

    schedules = []

    def recording_fit(*args, lr_schedule=None, **kwargs):
        schedules.append(lr_schedule)
        return fit(*args, lr_schedule=lr_schedule, **kwargs)

    fit = estimators.fit
    monkeypatch.setattr(estimators, "fit", recording_fit)
    X = correlated_table(2_000, seed=3).missing  # 1,800 training rows: 29 steps of 64 per epoch
    fast(Imputer, max_epochs=50, max_steps=40, patience=50).fit(X)  # the budget ends training, after 40 steps
    schedule = schedules[-1]
    assert [schedule(step) for step in (0, 20, 39)] == pytest.approx([1, 0.5, 1 / 40], rel=1e-12)
    fast(Imputer, max_epochs=1, max_steps=40, patience=50).fit(X)  # max_epochs ends it first: a constant rate
    fast(Imputer, max_epochs=2, max_steps=None, patience=50).fit(X)
    assert schedules[-2:] == [None, None]


def test_automatic_precision_is_bf16_only_for_a_big_table_on_native_bf16(table, monkeypatch):
    from mivae.tables import estimators

    assert fast(MIWAEImputer).fit(table.missing).precision_ == "fp32"
    monkeypatch.setattr(estimators, "BIG_TABLE", 100)  # the table's 200 rows count as big
    monkeypatch.setattr(estimators, "bf16_supported", lambda device: False)
    assert fast(MIWAEImputer).fit(table.missing).precision_ == "fp32"
    monkeypatch.setattr(estimators, "bf16_supported", lambda device: True)
    imputer = fast(MIWAEImputer).fit(table.missing)
    assert imputer.precision_ == "bf16" and np.isfinite(imputer.transform(table.missing)).all()
    assert fast(MIWAEImputer, precision="fp32").fit(table.missing).precision_ == "fp32"


def test_automatic_threads_are_one_for_a_small_table_and_every_core_for_a_large_one(table, monkeypatch):
    from mivae.tables import estimators

    assert fast(MIWAEImputer).fit(table.missing).threads_ == 1
    monkeypatch.setattr(estimators, "BIG_TABLE", 100)  # the table's 200 rows count as big
    assert fast(MIWAEImputer).fit(table.missing).threads_ == cores()
    assert fast(MIWAEImputer, threads=1).fit(table.missing).threads_ == 1
    with pytest.raises(ValueError, match="threads must be a whole number of at least 1 or 'auto'; got 'all'"):
        fast(MIWAEImputer, threads="all").fit(table.missing)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_get_params_set_params_and_clone_round_trip(Imputer):
    estimator = Imputer(hidden=(8, 4), latent=3, lr=0.01, max_epochs=7, categorical=[1], random_state=5)
    params = estimator.get_params()
    assert {k: params[k] for k in ("hidden", "latent", "lr", "max_epochs", "categorical", "random_state")} == dict(
        hidden=(8, 4), latent=3, lr=0.01, max_epochs=7, categorical=[1], random_state=5
    )
    assert Imputer().set_params(**params).get_params() == params
    assert estimator.set_params(max_epochs=9) is estimator and estimator.max_epochs == 9
    copy = clone(estimator)
    assert type(copy) is Imputer and copy.get_params() == estimator.get_params()
    with pytest.raises(ValueError, match="no_such_parameter"):
        estimator.set_params(no_such_parameter=1)


def test_clone_of_a_fitted_imputer_keeps_its_parameters_but_not_its_fit(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not any(hasattr(copy, name) for name in ("model_", "schema_", "history_", "n_features_in_"))


BAD_PARAMETERS = [
    ("likelihood", "foo"),
    ("hidden", ()),
    ("hidden", (16, 0)),
    ("hidden", 16),
    ("latent", 0),
    ("lr", -1),
    ("lr", 0),
    ("lr", float("nan")),
    ("lr", float("inf")),
    ("validation_fraction", 1.0),
    ("validation_fraction", -0.1),
    ("max_epochs", 0),
    ("patience", 0),
    ("batch_size", 0),
    ("precision", "fp8"),
    ("threads", 0),
    ("n_init", 0),
    ("n_models", 0),
    ("n_models", 1.5),
    ("decoder", "pca"),
    ("min_scale", 0),
    ("min_scale", -1.0),
    ("min_scale", float("nan")),
]


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("name", "value"), BAD_PARAMETERS, ids=[f"{n}={v!r}" for n, v in BAD_PARAMETERS])
def test_a_bad_parameter_is_stored_by_init_and_refused_by_fit_naming_it(Imputer, name, value, table):
    estimator = fast(Imputer, **{name: value})  # __init__ only stores
    assert estimator.get_params()[name] is value
    with pytest.raises(ValueError, match=rf"\b{name}\b") as error:
        estimator.fit(table.missing)
    assert repr(value) in str(error.value)  # what was received
    assert not hasattr(estimator, "model_")


@pytest.mark.parametrize("Imputer", (MIWAEImputer, NotMIWAEImputer), ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["importance_samples", "imputation_samples"])
def test_miwae_refuses_a_sample_count_below_one_naming_it(Imputer, name, table):
    with pytest.raises(ValueError, match=name):
        fast(Imputer, **{name: 0}).fit(table.missing)


def test_not_miwae_refuses_an_unknown_missingness_model_naming_the_known_ones(table):
    expected = "missingness must be self-masking, self-masking-high or self-masking-low; got 'mar'."
    with pytest.raises(ValueError, match=re.escape(expected)):
        fast(NotMIWAEImputer, missingness="mar").fit(table.missing)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_fit_refuses_a_table_with_nothing_observed_and_a_declared_column_that_is_absent(Imputer, table):
    with pytest.raises(ValueError, match="missing in every row"):
        fast(Imputer).fit(np.full((20, 3), np.nan))
    frame = pd.DataFrame(table.missing, columns=list("abcdef"))
    with pytest.raises(ValueError, match="'nope'"):
        fast(Imputer, categorical=["nope"]).fit(frame)


# --- 3. Imputation quality on known truths --------------------------------------------------------------------


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_imputation_is_far_better_than_column_means_on_correlated_data(Imputer):
    data = correlated_table(600, seed=0)
    assert 0.27 < data.mask.mean() < 0.33
    column_means = np.where(data.mask, np.nanmean(data.missing, axis=0), data.complete)
    baseline = rmse_missing(data.complete, column_means, data.mask)
    assert 0.9 < baseline < 1.1  # standardised units: the mean misses by about one std
    imputer = fast(Imputer, hidden=(64,), latent=2, max_epochs=100)
    single = rmse_missing(data.complete, imputer.fit_transform(data.missing), data.mask)
    draws = [rmse_missing(data.complete, copy, data.mask) for copy in imputer.sample(data.missing, 5)]
    # measured with these seeds: single 0.37 (VAE) and 0.24 (MIWAE) of the baseline, draws 0.35 to 0.49
    assert single < 0.7 * baseline, (single, baseline)
    assert all(single < draw < 0.8 * baseline for draw in draws), (single, draws, baseline)  # draws carry the spread


def test_a_model_that_imputes_the_columns_means_in_every_row_is_warned_of(fitted, table):
    # columns that do not depend on each other: the VAE's best fit imputes each column's mean, whatever the row
    rng = np.random.default_rng(0)
    independent = rng.standard_normal((300, 6))
    mask = ampute(independent, 0.3, "mcar", seed=0)
    missing = np.where(mask, np.nan, independent)
    collapsed = r"^the model imputes nearly the same value in every row, as the columns' means would \(its "
    collapsed += r"imputations' spread is at most 0\.0\d\d of each .* a longer patience \(say patience=200\) can"
    with pytest.warns(ConvergenceWarning, match=collapsed) as w:
        imputer = VAEImputer(random_state=0).fit(missing)
    assert w[0].filename == __file__  # it points at the caller of fit
    best = imputer.history_.best_epoch
    assert f"(best epoch {best} of {len(imputer.history_.train_loss)})" in str(w[0].message)
    filled = imputer.transform(missing)
    spreads = [filled[mask[:, j], j].std() / missing[~mask[:, j], j].std() for j in range(6)]
    assert imputer.imputation_spread_ < 0.1 and max(spreads) < 0.1, (imputer.imputation_spread_, spreads)
    means = np.nanmean(missing, axis=0)
    assert np.all(np.abs(filled[mask] - np.broadcast_to(means, filled.shape)[mask]) < 0.2)
    # a model that learned the shared table's structure imputes row by row: a wide spread, and no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the model imputes nearly", ConvergenceWarning)
        learned = fast(type(fitted), hidden=(64,), latent=2, max_epochs=100, patience=100).fit(table.missing)
    assert learned.imputation_spread_ > 0.5, learned.imputation_spread_
    # no continuous column to measure it on: not measured, and no warning
    labels = pd.DataFrame({"colour": pd.Categorical(np.random.default_rng(0).choice(["red", "blue", None], 60))})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the model imputes nearly", ConvergenceWarning)
        assert fast(type(fitted)).fit(labels).imputation_spread_ is None
    # where max_epochs ended a fit on the plateau, the advice is more epochs (the VAE's 20 epochs here)
    if type(fitted) is VAEImputer:
        assert fitted.imputation_spread_ < 0.1
        with pytest.warns(ConvergenceWarning, match=r"\(best epoch 20 of 20\), which more epochs can let it leave\.$"):
            fast(VAEImputer, max_epochs=20).fit(table.missing)


def self_masked_table(n, seed, d=6):
    """Returns a Table of standardised correlated columns in which every other column's values above its mean are
    missing: the not-MIWAE paper's protocol, missing not at random."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2)) @ rng.standard_normal((2, d)) + 0.1 * rng.standard_normal((n, d))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    mask = np.zeros(X.shape, dtype=bool)
    mask[:, ::2] = X[:, ::2] > 0
    return Table(X, mask, np.where(mask, np.nan, X))


def test_not_miwae_imputes_values_that_went_missing_for_being_high_far_better_than_miwae():
    data = self_masked_table(500, seed=1)
    settings = dict(hidden=(32, 32), max_epochs=100, random_state=1)
    miwae = MIWAEImputer(**settings).fit(data.missing)
    learned = NotMIWAEImputer(**settings).fit(data.missing)
    known = NotMIWAEImputer(missingness="self-masking-high", **settings).fit(data.missing)
    rmse = {name: rmse_missing(data.complete, imputer.transform(data.missing), data.mask)
            for name, imputer in (("miwae", miwae), ("learned", learned), ("known", known))}  # fmt: skip
    # measured: MIWAE 0.94, not-MIWAE learning the direction 0.51, told it 0.35
    assert rmse["known"] < 0.6 * rmse["miwae"] and rmse["learned"] < 0.75 * rmse["miwae"], rmse
    # MIWAE takes the gaps for a fair sample and fills them too low; not-MIWAE's draws lean upward, as the truth does
    truth = data.complete[data.mask].mean()  # 0.80
    too_low = truth - miwae.transform(data.missing)[data.mask].mean()  # measured 0.81
    copies = [copy[data.mask].mean() for copy in known.sample(data.missing, 3)]  # measured 0.54 to 0.56
    assert too_low > 0.5 and all(abs(mean - truth) < 0.5 * too_low for mean in copies), (copies, truth, too_low)
    assert learned.model_.self_masking.slopes()[::2].min() > 0  # it found the direction: high values go missing


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_min_scale_reaches_the_network_and_a_divergence_names_it_where_it_is_small(Imputer, table):
    imputer = fast(Imputer, min_scale=0.5).fit(table.missing)
    assert imputer.model_.min_scale == 0.5
    values, observed = (torch.from_numpy(a) for a in imputer.schema_.encode(table.missing))
    with torch.no_grad():
        mu, _ = imputer.model_.encode(values, observed)
        assert imputer.model_.decode(mu)["scale"].min().item() >= 0.5
    # a learning rate that blows training up in its first steps: the advice names both remedies, then the rate alone
    advice = r"a lower learning rate \(now 100\) usually helps, and where columns repeat values exactly \(counts, "
    with pytest.raises(
        ValueError, match=advice + r"pixel intensities\) so does a larger min_scale \(now 0.001; say 1\)\.$"
    ):
        fast(Imputer, lr=100.0).fit(table.missing)
    with pytest.raises(ValueError, match=r"lower learning rate \(now 100\) usually helps\.$"):
        fast(Imputer, lr=100.0, min_scale=1.0).fit(table.missing)


def test_a_linear_decoder_extrapolates_a_linear_table_beyond_the_values_that_stayed():
    """One factor drives four columns; the values above the mean of two of them are missing. MICE regresses on
    the low values alone, which flattens its slopes (selection on the outcome); probabilistic PCA's decoder with the
    self-masking model recovers them."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 1)) @ np.array([[1.0, 0.8, 0.9, 0.7]]) + 0.3 * rng.standard_normal((300, 4))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    mask = np.zeros(X.shape, dtype=bool)
    mask[:, ::2] = X[:, ::2] > 0
    missing = np.where(mask, np.nan, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mice = rmse_missing(X, IterativeImputer(random_state=0).fit_transform(missing), mask)
    linear = NotMIWAEImputer(
        missingness="self-masking-high", decoder="linear", hidden=(16,), lr=0.01, max_epochs=200,
        validation_fraction=0.0, random_state=0,
    ).fit(missing)  # fmt: skip
    rmse = rmse_missing(X, linear.transform(missing), mask)
    # measured: 0.31 (the noise is 0.3 of a column's spread before standardising), MICE 0.65
    assert rmse < 0.45 and rmse < 0.7 * mice, (rmse, mice)
    assert linear.model_.decoder.affine.in_features == linear.latent_  # no hidden layer between the latent and x


def test_miwae_with_a_linear_decoder_trains_on_the_exact_likelihood_and_leaves_the_encoder_alone():
    data = correlated_table(300, seed=2)
    imputer = MIWAEImputer(decoder="linear", hidden=(16,), max_epochs=30, random_state=0)
    initial = {}
    train = MIWAEImputer._train

    def spy(self, *args, **kwargs):  # the network as fit built it, before training
        initial.update({k: v.clone() for k, v in self.model_.state_dict().items()})
        return train(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MIWAEImputer, "_train", spy)
        imputer.fit(data.missing)
    state = imputer.model_.state_dict()
    assert all(torch.equal(state[k], initial[k]) for k in state if k.startswith(("encoder", "to_mu", "to_logvar")))
    assert not torch.equal(state["decoder.affine.weight"], initial["decoder.affine.weight"])
    # the validation score is log p(x_obs) of the held-out rows under the kept network, exactly
    values, observed = (torch.from_numpy(a) for a in imputer.schema_.encode(data.missing))
    held_out = torch.randperm(300, generator=torch.Generator().manual_seed(imputer.seed_))[:30]
    with torch.no_grad():
        exact = factor_observed_log_density(*imputer.model_.factor_model(), values[held_out], observed[held_out])
    history = imputer.history_
    assert history.val_score[history.best_epoch - 1] == pytest.approx(exact.mean().item(), rel=1e-5)
    assert max(history.val_score) == history.val_score[history.best_epoch - 1]


def test_miwae_with_a_linear_decoder_imputes_and_draws_from_the_exact_gaussian_conditional():
    data = correlated_table(300, seed=2)
    imputer = MIWAEImputer(decoder="linear", hidden=(16,), max_epochs=30, random_state=0).fit(data.missing)
    exact = imputer.transform(data.missing)
    # importance sampling approximates the same conditional mean: with many proposals it comes close
    imputer.set_params(imputation_samples=20_000)
    imputer.model_.factor_model = lambda: None
    sampled = imputer.transform(data.missing)
    del imputer.model_.factor_model
    # measured 0.005, from proposals of an encoder that exact training leaves as it was initialised
    assert np.abs(exact - sampled).mean() < 0.01, np.abs(exact - sampled).mean()
    # 4,000 draws of one row with two gaps: their mean and spread are those of the Gaussian p(x_gaps | x_seen)
    row = data.missing[np.isnan(data.missing).sum(axis=1) == 2][:1]
    draws, observed = imputer.encoded_imputations(row, 4000)
    values = np.nan_to_num(imputer.schema_.encode(row)[0][0]).astype(np.float64)
    bias, weight, scale = (t.detach().numpy() for t in imputer.model_.factor_model())
    cov = weight @ weight.T + np.diag(scale**2)
    gaps, seen = observed[0] == 0, observed[0] == 1
    regression = cov[np.ix_(gaps, seen)] @ np.linalg.inv(cov[np.ix_(seen, seen)])
    mean = bias[gaps] + regression @ (values[seen] - bias[seen])
    spread = cov[np.ix_(gaps, gaps)] - regression @ cov[np.ix_(seen, gaps)]
    filled = imputer.schema_.encode(imputer.transform(row))[0][0]  # the single imputation, standardised
    np.testing.assert_allclose(filled[gaps], mean, atol=1e-5)  # is the conditional mean
    error = np.sqrt(np.diag(spread) / 4000)
    assert (np.abs(draws[:, 0, gaps].mean(axis=0) - mean) < 4 * error).all()
    # a sample covariance of n draws has standard errors near sqrt(var_i var_j / n): within 4 of them
    np.testing.assert_allclose(np.cov(draws[:, 0, gaps].T), spread, atol=4 * np.diag(spread).max() / np.sqrt(4000))
    assert (draws[:, 0, seen] == values[seen]).all()  # observed entries kept in every draw


def test_a_fit_that_diverges_after_scored_epochs_keeps_its_best_weights_and_says_so(table, monkeypatch):
    log_weights = TabularVAE.log_weights
    calls = []

    def exploding(self, *args, **kwargs):  # sane for 42 calls (10 epochs of 3 steps and a score, 2 steps), then 1e9 x
        log_w, params = log_weights(self, *args, **kwargs)
        calls.append(self.training)
        return (log_w * 1e9 if len(calls) > 42 and self.training else log_w), params

    monkeypatch.setattr(TabularVAE, "log_weights", exploding)
    kept = r"; the weights of epoch \d+, its best before that, are kept\.$"
    with pytest.warns(UserWarning, match=r"^training diverged: the loss went from .*say 1\)" + kept) as w:
        imputer = fast(MIWAEImputer, max_epochs=100).fit(table.missing)
    assert w[0].filename == __file__  # it points at the caller of fit
    history = imputer.history_
    epochs = len(history.train_loss)
    assert 1 <= history.best_epoch <= epochs == len(history.val_score)
    assert calls.count(False) == epochs + 1  # a validation pass per epoch, then the imputations' spread
    assert not any(issubclass(x.category, ConvergenceWarning) for x in w)
    # the weights kept are those a fit stopped at the last whole epoch keeps: the best epoch's
    monkeypatch.setattr(TabularVAE, "log_weights", log_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        stopped = fast(MIWAEImputer, max_epochs=epochs).fit(table.missing)
    assert stopped.history_.val_score == history.val_score
    np.testing.assert_array_equal(stopped.transform(table.missing), imputer.transform(table.missing))


@pytest.mark.parametrize("decoder", ["mlp", "linear"])
def test_a_fit_that_max_epochs_ended_still_improving_is_warned_of_and_no_other(decoder, table):
    with pytest.warns(
        ConvergenceWarning, match=r"epoch limit \(max_epochs=3\) with the validation bound still improving"
    ) as w:
        imputer = fast(MIWAEImputer, decoder=decoder).fit(table.missing)
    assert w[0].filename == __file__  # it points at the caller of fit
    assert f"best at epoch {imputer.history_.best_epoch}, under patience=50" in str(w[0].message)
    assert ("the linear decoder needs thousands" in str(w[0].message)) == (decoder == "linear")
    assert not imputer.history_.stopped_early and len(imputer.history_.train_loss) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        if decoder == "mlp":  # the linear one's exact likelihood rose at every one of 400 epochs here
            stopped = fast(MIWAEImputer, max_epochs=400, patience=2).fit(table.missing)
            assert stopped.history_.stopped_early  # early stopping ended it
        fast(MIWAEImputer, decoder=decoder, validation_fraction=0.0).fit(table.missing)  # no bound to improve
        budget = fast(MIWAEImputer, decoder=decoder, max_steps=2).fit(table.missing)  # its rate fell to zero
        assert budget.steps_ == 2 and not budget.history_.stopped_early


def test_single_imputations_far_outside_the_observed_range_are_warned_of(table, monkeypatch):
    imputer = fast(MIWAEImputer).fit(table.missing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound model's imputations: no warning
        imputer.transform(table.missing)
    # 50 standard deviations from each column's mean: beyond its observed range by more than twice its width
    far = lambda model, values, observed: torch.where(imputer._observed_slots(observed) > 0, values, 50.0)  # noqa
    monkeypatch.setattr(imputer, "_single", far)
    names = ", ".join(f"{c.name!r} ({table.mask[:, j].sum()})" for j, c in enumerate(imputer.schema_.columns))
    with pytest.warns(UserWarning, match=re.escape(f"more than twice its width in column(s) {names}: the model")) as w:
        filled = imputer.transform(table.missing)
    assert w[0].filename == __file__  # it points at the caller of transform, not inside mivae
    assert (filled[table.mask] > table.complete.max()).all()  # warned of, not changed


# --- 4. Mixed types through a DataFrame -----------------------------------------------------------------------

COLOURS = {"red", "green", "blue"}


class Mixed(NamedTuple):
    complete: pd.DataFrame
    incomplete: pd.DataFrame
    mask: pd.DataFrame  # True = missing


def mixed_frame(n=300, seed=0):
    """Returns a Mixed table: two floats, a nullable integer, a colour and a bool-like flag that depend on the
    floats."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = a + 0.3 * rng.standard_normal(n)
    complete = pd.DataFrame(
        {
            "a": a,
            "b": b,
            "count": pd.array(np.round(2 * b + 5).astype(int), dtype="Int64"),
            "colour": np.where(a < -0.5, "red", np.where(a < 0.5, "green", "blue")),
            "flag": (b > 0).astype(object),
        },
        index=pd.Index([f"row{i}" for i in range(n)], name="id"),
    )
    mask = pd.DataFrame(rng.random(complete.shape) < 0.2, index=complete.index, columns=complete.columns)
    incomplete = complete.copy()
    incomplete["a"] = incomplete["a"].mask(mask["a"])  # NaN
    incomplete["b"] = incomplete["b"].mask(mask["b"])
    incomplete["count"] = incomplete["count"].mask(mask["count"])  # pd.NA
    incomplete["colour"] = incomplete["colour"].astype(object).where(~mask["colour"], None)
    incomplete["flag"] = incomplete["flag"].where(~mask["flag"], None)
    return Mixed(complete, incomplete, mask)


@pytest.fixture(scope="module")
def mixed():
    return mixed_frame()


@pytest.fixture(scope="module", params=IMPUTERS, ids=lambda c: c.__name__)
def fitted_mixed(request, mixed):
    return fast(request.param, hidden=(32,), max_epochs=60).fit(mixed.incomplete)


def assert_observed_kept(out, frame):
    """Asserts every observed entry of DataFrame `frame` is in `out` unchanged, column by column."""
    for name in frame.columns:
        seen = frame[name].notna().to_numpy()
        if pd.api.types.is_numeric_dtype(frame[name]) and not pd.api.types.is_bool_dtype(frame[name]):
            given = frame[name].to_numpy(float, na_value=np.nan)  # a nullable integer's pd.NA as NaN
            np.testing.assert_array_equal(out[name].to_numpy(float)[seen], given[seen])
        else:
            assert out[name][seen].tolist() == frame[name][seen].tolist(), name


def test_the_mixed_frame_has_the_intended_types_and_gaps(mixed):
    kinds = mixed.incomplete.dtypes
    assert kinds["a"] == np.float64 and str(kinds["count"]) == "Int64"
    assert mixed.incomplete["count"].isna().sum() == mixed.mask["count"].sum() > 30
    assert mixed.incomplete["colour"].isna().sum() > 30 and mixed.incomplete["flag"].isna().sum() > 30
    assert set(mixed.complete["colour"]) == COLOURS


def test_a_mixed_frame_comes_back_with_its_columns_index_and_observed_entries(fitted_mixed, mixed):
    frame = mixed.incomplete
    out = fitted_mixed.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(frame.columns) and out.index.equals(frame.index)
    assert not out.isna().any().any()
    assert_observed_kept(out, frame)
    assert set(out["colour"]) <= COLOURS
    assert {type(v) for v in out["flag"]} <= {bool, np.bool_} and set(out["flag"]) <= {True, False}
    assert out["a"].dtype == np.float64 and out["b"].dtype == np.float64
    for copy in fitted_mixed.sample(frame, 3):
        assert list(copy.columns) == list(frame.columns) and copy.index.equals(frame.index)
        assert not copy.isna().any().any() and set(copy["colour"]) <= COLOURS and set(copy["flag"]) <= {True, False}
        assert_observed_kept(copy, frame)


def test_mixed_imputations_follow_the_continuous_columns(fitted_mixed, mixed):
    out, truth, mask = fitted_mixed.transform(mixed.incomplete), mixed.complete, mixed.mask
    for name in ("colour", "flag"):
        missed = mask[name].to_numpy()
        accuracy = np.mean(out[name][missed].to_numpy() == truth[name][missed].to_numpy())
        chance = truth[name].value_counts(normalize=True).max()  # always guessing the commonest label
        # measured: colour 0.76 (VAE) and 0.84 (MIWAE) against 0.35; flag 0.92 and 0.94 against 0.53
        assert accuracy > chance + 0.2, (name, accuracy, chance)
    missed = mask["b"].to_numpy()
    error = np.sqrt(np.mean((out["b"][missed] - truth["b"][missed]) ** 2))
    assert error < 0.6 * truth["b"].std(), error  # b follows a, mostly observed; measured 0.26 to 0.43


def test_a_label_unseen_at_fit_names_its_column_and_label(fitted_mixed, mixed):
    frame = mixed.incomplete.copy()
    frame.loc[frame.index[3], "colour"] = "purple"
    for method in (fitted_mixed.transform, lambda X: fitted_mixed.sample(X, 2)):
        with pytest.raises(ValueError) as error:
            method(frame)
        assert "'colour'" in str(error.value) and "'purple'" in str(error.value)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_an_all_missing_column_warns_naming_it_and_comes_back_missing(Imputer, mixed):
    frame = mixed.incomplete.copy()
    frame.insert(2, "unknown", np.nan)
    frame["notes"] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    with pytest.warns(UserWarning, match="'unknown'.*'notes'"):
        imputer = fast(Imputer, max_epochs=5).fit(frame)
    out = imputer.transform(frame)
    assert list(out.columns) == list(frame.columns) and out.index.equals(frame.index)
    assert out["unknown"].isna().all() and out["notes"].isna().all()
    assert not out.drop(columns=["unknown", "notes"]).isna().any().any()
    assert_observed_kept(out, frame.drop(columns=["unknown", "notes"]))


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_a_numeric_column_declared_categorical_is_imputed_with_observed_codes(Imputer, table):
    codes = np.array([1.0, 2.0, 5.0])
    X = table.missing.copy()
    X[:, 2] = np.where(table.mask[:, 2], np.nan, codes[np.digitize(table.complete[:, 0], [-0.5, 0.5])])
    missed = table.mask[:, 2]
    declared = fast(Imputer, max_epochs=10, categorical=[2]).fit(X)
    out = declared.transform(X)
    assert set(np.unique(out[missed, 2])) <= set(codes)
    for copy in declared.sample(X, 2):
        assert set(np.unique(copy[missed, 2])) <= set(codes)
    undeclared = fast(Imputer, max_epochs=10).fit_transform(X)  # the same column taken as continuous
    assert not set(np.unique(undeclared[missed, 2])) <= set(codes)
    frame = pd.DataFrame(X, columns=list("abcdef"))  # and by name in a DataFrame
    named = fast(Imputer, max_epochs=10, categorical=["c"]).fit(frame).transform(frame)
    assert set(np.unique(named["c"][missed])) <= set(codes)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_pandas_nullable_and_category_columns_are_imputed_together(Imputer, mixed):
    frame = mixed.incomplete.copy()
    frame["colour"] = frame["colour"].astype("category")
    frame["flag"] = frame["flag"].astype("boolean")
    out = fast(Imputer, max_epochs=5).fit(frame).transform(frame)
    assert list(out.columns) == list(frame.columns) and not out.isna().any().any()
    assert set(out["colour"]) <= COLOURS and set(out["flag"]) <= {True, False}
    assert_observed_kept(out, frame)


# --- 5. The multiple-imputation classifier ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine():
    """sklearn's wine data (178 rows, 13 features, 3 classes) with 30 % of entries MCAR."""
    X, y = load_wine(return_X_y=True)
    mask = ampute(X, 0.3, "mcar", seed=0)
    return Table(X, mask, np.where(mask, np.nan, X)), y


WINE_CHANCE = 71 / 178  # the commonest class


def mi_classifier(Imputer, **params):
    return MultipleImputationClassifier(
        **{"imputer": fast(Imputer, max_epochs=10), "n_imputations": 3, "random_state": 0, **params}
    )


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_the_classifier_in_a_pipeline_cross_validates_well_on_wine_with_missing_entries(Imputer, wine):
    data, y = wine
    pipeline = make_pipeline(FunctionTransformer(np.log1p), mi_classifier(Imputer))  # log1p keeps NaN as NaN
    scores = cross_val_score(pipeline, data.missing, y, cv=3)
    assert scores.mean() > 0.75, scores  # chance is 0.40; measured 0.89 for both imputers


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_grid_search_over_imputations_and_imputer_epochs_exposes_the_best(Imputer, wine):
    data, y = wine
    grid = {"n_imputations": [1, 3], "imputer__max_epochs": [2, 5]}
    search = GridSearchCV(mi_classifier(Imputer), grid, cv=3).fit(data.missing, y)
    assert search.best_params_ in [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    assert len(search.cv_results_["params"]) == 4
    assert np.all(search.cv_results_["mean_test_score"] > WINE_CHANCE + 0.2)
    best = search.best_estimator_
    assert best.n_imputations == search.best_params_["n_imputations"]
    assert best.imputer_.max_epochs == search.best_params_["imputer__max_epochs"]
    assert len(best.imputer_.history_.train_loss) <= best.imputer_.max_epochs


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_string_labels_come_back_as_given(Imputer, table):
    y = np.where(table.complete[:, 0] > np.median(table.complete[:, 0]), "a", "b")
    classifier = mi_classifier(Imputer, imputer=fast(Imputer, max_epochs=20)).fit(table.missing, list(y))
    assert list(classifier.classes_) == ["a", "b"]
    predicted = classifier.predict(table.missing)
    assert set(predicted) <= {"a", "b"} and all(isinstance(label, str) for label in predicted)
    assert np.mean(predicted == y) > 0.8  # measured 0.90 (VAE) and 0.96 (MIWAE): column 0 is 30 % missing
    np.testing.assert_array_equal(predicted, classifier.classes_[classifier.predict_proba(table.missing).argmax(1)])


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_predict_proba_gives_probabilities_that_do_not_depend_on_the_other_rows(Imputer, wine):
    data, y = wine
    classifier = mi_classifier(Imputer).fit(data.missing, y)
    proba = classifier.predict_proba(data.missing)
    assert proba.shape == (len(y), 3) and np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)  # float32 features: sums within 1e-7
    assert np.mean(classifier.predict(data.missing) == y) > 0.8
    for i in np.flatnonzero(data.mask.any(axis=1))[:4]:
        np.testing.assert_allclose(classifier.predict_proba(data.missing[i : i + 1])[0], proba[i], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(classifier.predict_proba(data.missing), proba)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_shared_imputations_of_a_row_do_not_depend_on_its_batch(Imputer, table, monkeypatch):
    import mivae.tables.estimators

    monkeypatch.setattr(mivae.tables.estimators, "BATCH_ROWS", 7)  # the table spans many batches
    imputer = fast(Imputer).fit(table.missing)
    whole, _ = imputer.encoded_imputations(table.missing, 3, seed=5)
    for i in (0, 9, 150):
        alone, _ = imputer.encoded_imputations(table.missing[i : i + 1], 3, seed=5)
        np.testing.assert_allclose(alone[:, 0], whole[:, i], rtol=0, atol=1e-5)  # matmuls of other sizes round alike
    own, _ = imputer.encoded_imputations(table.missing, 3, seed=5, shared=False)
    assert not np.array_equal(own, whole)  # unshared: every row draws its own noise


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_add_indicator_gives_the_classifier_the_observed_mask_as_well(Imputer, wine):
    data, y = wine
    plain = mi_classifier(Imputer, n_imputations=1).fit(data.missing, y)
    marked = mi_classifier(Imputer, n_imputations=1, add_indicator=True).fit(data.missing, y)
    assert plain.classifier_.n_features_in_ == 13 and marked.classifier_.n_features_in_ == 26


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (dict(imputer=SimpleImputer()), "SimpleImputer"),
        (dict(n_imputations=0), "n_imputations"),
    ],
    ids=["SimpleImputer", "n_imputations=0"],
)
def test_the_classifier_refuses_what_cannot_draw_multiple_imputations(params, named, wine):
    data, y = wine
    with pytest.raises(ValueError, match=named):
        mi_classifier(VAEImputer, **params).fit(data.missing, y)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_an_imputer_then_logistic_regression_in_a_pipeline_cross_validates_well(Imputer, wine):
    data, y = wine
    pipeline = make_pipeline(fast(Imputer, max_epochs=20), StandardScaler(), LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipeline, data.missing, y, cv=3)
    assert scores.mean() > 0.75, scores  # chance is 0.40; measured 0.90 with MIWAEImputer


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_activation_and_standardize_are_checked_and_standardize_false_keeps_the_scale_given(Imputer, table):
    with pytest.raises(ValueError, match=re.escape("activation must be relu or tanh; got 'gelu'.")):
        fast(Imputer, activation="gelu").fit(table.missing)
    with pytest.raises(ValueError, match=re.escape("standardize must be True or False; got 'no'.")):
        fast(Imputer, standardize="no").fit(table.missing)
    given = fast(Imputer, standardize=False).fit(table.missing)
    scaled = fast(Imputer).fit(table.missing)
    assert all(c.mean == 0.0 and c.std == 1.0 for c in given.schema_.columns)
    observed = table.missing[:, 0][~np.isnan(table.missing[:, 0])]
    assert scaled.schema_.columns[0].mean == pytest.approx(observed.mean())
    filled, seen = given.transform(table.missing), ~np.isnan(table.missing)
    assert np.isfinite(filled).all() and (filled[seen] == table.missing[seen]).all()


def _kept_bound(imputer):
    history = imputer.history_
    return history.val_score[history.best_epoch - 1]


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_n_init_keeps_the_start_with_the_best_validation_bound(Imputer, table, monkeypatch):
    one = fast(Imputer, max_epochs=8, random_state=5).fit(table.missing)
    again = fast(Imputer, max_epochs=8, random_state=5, n_init=1).fit(table.missing)
    assert np.array_equal(one.transform(table.missing), again.transform(table.missing))  # the default, as before
    bounds = [_kept_bound(fast(Imputer, max_epochs=8, random_state=5, n_init=k).fit(table.missing)) for k in (1, 2, 4)]
    assert bounds[0] == _kept_bound(one) and bounds[0] <= bounds[1] <= bounds[2]  # more starts, never a worse one
    four = fast(Imputer, max_epochs=8, random_state=5, n_init=4).fit(table.missing)
    starts = [(one.seed_ + 7919 * i) % (2**31 - 1) for i in range(4)]
    assert four.seed_ in starts and _kept_bound(four) == bounds[2]

    starts_seen = []  # each start's kept bound and network, as fit trains them
    train = Imputer._train

    def spy(self, *args, **kwargs):
        history = train(self, *args, **kwargs)
        starts_seen.append((history.val_score[history.best_epoch - 1], self.model_))
        return history

    monkeypatch.setattr(Imputer, "_train", spy)
    four = fast(Imputer, max_epochs=8, random_state=5, n_init=4).fit(table.missing)
    assert len({bound for bound, _ in starts_seen}) == 4  # the starts differ
    assert four.model_ is max(starts_seen, key=lambda start: start[0])[1]
    with pytest.raises(ValueError, match="n_init=3 keeps the fit with the best validation bound, so it needs held-out"):
        fast(Imputer, n_init=3, validation_fraction=0.0).fit(table.missing)
    few = table.missing[:9]  # 10 % of 9 rows is no row: nothing to choose by
    with pytest.raises(ValueError, match=r"n_init=2 .* validation_fraction=0.1 of 9 rows holds out none"):
        fast(Imputer, n_init=2).fit(few)
    assert fast(Imputer, n_init=2, validation_fraction=0.2).fit(few).n_features_in_ == few.shape[1]


def _member(ensemble, k):
    """A copy of the fitted `ensemble` that imputes with its k-th network alone."""
    alone = shallow_copy(ensemble)
    alone.models_, alone.model_ = [ensemble.models_[k]], ensemble.models_[k]
    return alone


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_n_models_averages_its_networks_imputations_and_draws_in_turn_from_each(Imputer, table, monkeypatch):
    splits = []  # the seed of each network's held-out rows, as fit trains them
    train = Imputer._train

    def spy(self, values, observed, seed, split_seed):
        splits.append(split_seed)
        return train(self, values, observed, seed, split_seed)

    monkeypatch.setattr(Imputer, "_train", spy)
    one = fast(Imputer, max_epochs=8, random_state=5).fit(table.missing)
    three = fast(Imputer, max_epochs=8, random_state=5, n_models=3).fit(table.missing)
    assert len(three.models_) == 3 and three.model_ is three.models_[0] and len(one.models_) == 1
    assert splits[0] == splits[1] and len(set(splits[1:])) == 3  # the first is n_models=1's; each holds out its own
    first, second = (dict(m.named_parameters()) for m in three.models_[:2])
    assert all(torch.equal(p, first[n]) for n, p in one.model_.named_parameters())  # the first: the one-network fit
    assert not all(torch.equal(p, second[n]) for n, p in first.items())
    assert three.history_.train_loss == one.history_.train_loss and three.seed_ == one.seed_
    assert three.steps_ > one.steps_  # all three networks'

    members = [_member(three, k).transform(table.missing) for k in range(3)]
    filled = three.transform(table.missing)
    np.testing.assert_allclose(filled, np.mean(members, axis=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # so the mean is not any one of them
    # the i-th imputation comes from network i mod 3: the first network's are the ones it draws alone, in turn
    draws, alone = three.sample(table.missing, 6), _member(three, 0).sample(table.missing, 2)
    np.testing.assert_array_equal(draws[0], alone[0])
    np.testing.assert_array_equal(draws[3], alone[1])
    assert not np.array_equal(draws[1], alone[1])
    seen = ~table.mask
    assert all((d[seen] == table.missing[seen]).all() and not np.isnan(d).any() for d in draws)
    assert len(three.sample(table.missing, 2)) == 2  # fewer imputations than networks: one from each of the first

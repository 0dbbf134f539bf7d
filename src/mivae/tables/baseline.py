"""Classifying a table with gaps, judged honestly: the target checked, the model cross-validated, and beside it a
baseline on the same folds, the same classifier on each column's mean or mode."""

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mivae.errors import InputError, check_whole
from mivae.tables.schema import CATEGORICAL, infer_kinds


def split_target(frame, target, folds, source="the table", folds_name="folds"):
    """Returns (X, y): `frame` without its column `target`, and that column as labels (text as str).

    Raises InputError where the target cannot be learned in `folds` stratified folds: absent, incomplete, a
    single class, a class with fewer rows than folds, or no other column to predict it from. `source` and
    `folds_name` are how the messages name the table and the number of folds ("--folds" for the CLI)."""
    check_whole(folds_name, folds, 2, error=InputError)
    if target not in frame.columns:
        raise InputError(f"target column {target!r} is not in {source}, whose columns are {', '.join(frame.columns)}.")
    X = frame.drop(columns=[target])
    y = frame[target]
    if y.isna().any():
        raise InputError(
            f"target column {target!r} is missing in {int(y.isna().sum())} of {len(y)} rows; a target must be complete."
        )
    if X.shape[1] == 0:
        raise InputError(f"{source} has no column besides the target {target!r} to predict it from.")
    counts = y.value_counts()
    if len(counts) < 2:
        raise InputError(f"target column {target!r} holds only the class {counts.index[0]!r}; it needs two or more.")
    if counts.min() < folds:
        raise InputError(
            f"{folds_name} {folds} needs at least {folds} rows of every class, but class {counts.idxmin()!r} has "
            f"{counts.min()}."
        )
    return X, (y.astype(str) if y.dtype == object else y)


def baseline_classifier(X, categorical=(), indicator=False):
    """Returns the baseline for table X: a logistic regression on each continuous column's mean, standardised, and
    each categorical column's mode, one-hot (with the missingness indicators where `indicator`), all fitted
    within each fold."""
    kinds = dict(zip(X.columns, infer_kinds(X, list(categorical))))
    continuous = [c for c, kind in kinds.items() if kind != CATEGORICAL]
    labels = [c for c, kind in kinds.items() if kind == CATEGORICAL]
    parts = [
        ("continuous", make_pipeline(SimpleImputer(add_indicator=indicator), StandardScaler()), continuous),
        (
            "categorical",
            make_pipeline(
                SimpleImputer(strategy="most_frequent", add_indicator=indicator), OneHotEncoder(handle_unknown="ignore")
            ),
            labels,
        ),
    ]
    return make_pipeline(ColumnTransformer([part for part in parts if part[2]]), LogisticRegression(max_iter=1000))


@dataclass(frozen=True)
class Comparison:
    """Accuracies per fold of a model and of the baseline on the same stratified folds."""

    scores: list[float]
    baseline_scores: list[float] | None  # None where the baseline could not be fitted
    baseline_failure: str | None = None  # why not, in one line

    def summary(self, baseline=False):
        """Returns (mean, standard deviation over folds with ddof = 1) of the model's scores, or the baseline's."""
        scores = self.baseline_scores if baseline else self.scores
        if scores is None:
            raise ValueError(f"the baseline has no scores: {self.baseline_failure}")
        return float(np.mean(scores)), float(np.std(scores, ddof=1))


def compare_with_baseline(model, X, y, folds=5, seed=0, categorical=(), indicator=False):
    """Returns the Comparison of `model` with `baseline_classifier(X, categorical, indicator)`, both cross-validated
    on the same `folds` stratified folds shuffled by `seed`. The model's warnings pass on to the caller; the
    baseline failing is reported in the result, not raised: the comparison is a courtesy."""
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_validate(model, X, y, cv=splits, error_score="raise")["test_score"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the baseline would warn of (an all-missing column) the model did
        try:
            baseline = cross_validate(
                baseline_classifier(X, categorical, indicator), X, y, cv=splits, error_score="raise"
            )["test_score"].tolist()
        except ValueError as e:
            return Comparison(scores, None, str(e).split("\n")[0])
    return Comparison(scores, baseline)

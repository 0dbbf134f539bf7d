"""Classifying a table with gaps: the target's checks, and the model beside the mean-and-mode baseline."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from mivae.errors import InputError
from mivae.tables.baseline import baseline_classifier, compare_with_baseline, split_target


def _frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    label = np.where(a + b > 0, "yes", "no")
    colour = np.where(a > 0, "red", "blue").astype(object)
    frame = pd.DataFrame({"a": a, "b": b, "colour": colour, "label": label})
    frame.loc[rng.random(n) < 0.2, "a"] = np.nan
    frame.loc[rng.random(n) < 0.2, "colour"] = None
    return frame


@pytest.mark.parametrize(
    "change, target, folds, message",
    [
        (lambda f: f, "nope", 2, "target column 'nope' is not in t.csv, whose columns are a, b, colour, label."),
        (lambda f: f.assign(label=f["label"].where(f.index > 0)), "label", 2, "is missing in 1 of 120 rows"),
        (lambda f: f.assign(label="yes"), "label", 2, "holds only the class 'yes'; it needs two or more."),
        (lambda f: f[["label"]], "label", 2, "t.csv has no column besides the target 'label' to predict it from."),
        (
            lambda f: pd.concat([f[f.label == "no"].head(2), f[f.label == "yes"]]),
            "label",
            3,
            "folds 3 needs at least 3 rows of every class",
        ),
        (lambda f: f, "label", 1, "folds must be a whole number of at least 2; got 1."),
    ],
)
def test_split_target_refuses_a_target_that_cannot_be_learned_in_folds(change, target, folds, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_target(change(_frame()), target, folds, source="t.csv")


def test_split_target_returns_the_other_columns_and_the_labels():
    X, y = split_target(_frame(), "label", 5)
    assert list(X.columns) == ["a", "b", "colour"] and set(y) == {"yes", "no"} and len(X) == len(y) == 120


def test_the_comparison_cross_validates_both_on_the_same_folds():
    X, y = split_target(_frame(), "label", 4)
    model = make_pipeline(baseline_classifier(X, ["colour"]).steps[0][1], LogisticRegression())  # the baseline again
    result = compare_with_baseline(model, X, y, folds=4, seed=3, categorical=["colour"])
    direct = cross_val_score(
        baseline_classifier(X, ["colour"]), X, y, cv=StratifiedKFold(4, shuffle=True, random_state=3)
    )
    assert result.scores == pytest.approx(direct.tolist()) and result.baseline_scores == pytest.approx(direct.tolist())
    assert result.summary()[0] == pytest.approx(direct.mean()) and result.summary()[0] > 0.7  # a + b > 0 is learnable
    assert result.summary(baseline=True)[1] == pytest.approx(direct.std(ddof=1))


def test_a_baseline_that_cannot_be_fitted_is_reported_not_raised():
    X, y = split_target(_frame(), "label", 3)
    result = compare_with_baseline(baseline_classifier(X), X, y, folds=3, categorical=["missing-column"])
    assert len(result.scores) == 3 and result.baseline_scores is None
    assert "missing-column" in result.baseline_failure

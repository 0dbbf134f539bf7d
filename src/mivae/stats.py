"""Statistics for comparing classifiers on the same test images (thesis §3.6, Figs. 12 and 16) and for
the quality of their predicted probabilities (negative log-likelihood, Brier score, calibration, coverage)."""

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


def accuracy(predicted, labels):
    """Returns the fraction of `predicted` classes equal to `labels`."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    return float((predicted == labels).mean())


@dataclass(frozen=True)
class PairedTest:
    """Two classifiers compared image by image on one test set."""

    n_differ: int  # images on which their predictions differ (both wrong included)
    x: float  # b / (b + c): of the images exactly one of them gets right, the share classifier 1 does
    z: float  # sqrt(b + c) (2x - 1) = (b - c) / sqrt(b + c): classifier 1 better by z standard deviations
    only_1_right: int  # b: images classifier 1 gets right and classifier 2 wrong
    only_2_right: int  # c: the reverse
    mcnemar_p: float  # two-sided exact McNemar p-value from b and c


def paired_test(predicted_1, predicted_2, labels):
    """Returns the `PairedTest` of two classifiers' predictions on the same labelled images.

    §3.6's z = sqrt(N) (2x - 1), with N the images "where their predictions differ" and x the
    share of them classifier 1 gets right, under the null hypothesis x = 1/2. With ten classes
    the predictions also differ where both are wrong; counted in N, each such image lowers z for
    either order, so z(1 vs 2) and z(2 vs 1) could both be far below zero. Here N counts the
    images exactly one of the two gets right, z = (b - c) / sqrt(b + c), the normal form of
    McNemar's test; the thesis' own z values leave room for only a handful of images both get
    wrong, where the literal count finds about 80 (docs/reproduction.md).
    """
    p1, p2, labels = (np.asarray(a) for a in (predicted_1, predicted_2, labels))
    b = int(((p1 == labels) & (p2 != labels)).sum())
    c = int(((p1 != labels) & (p2 == labels)).sum())
    n = b + c
    x = b / n if n else 0.5
    return PairedTest(int((p1 != p2).sum()), x, float(np.sqrt(n) * (2 * x - 1)), b, c, mcnemar_exact(b, c))


def mcnemar_exact(b, c):
    """Returns the two-sided exact McNemar p-value: b successes in b + c fair coin flips, or fewer."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), n, 0.5)))


def class_distribution(predicted, n_classes=10):
    """Returns how many images are assigned to each class, shape (n_classes,) (Figs. 12 and 16)."""
    return np.bincount(np.asarray(predicted), minlength=n_classes)


# ----------------------------------------------------------------------------------------
# Uncertainty: how good the predicted probabilities are, not only their argmax


def _checked(proba, labels):
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels)
    if proba.ndim != 2 or len(proba) != len(labels):
        raise ValueError(
            f"expected probabilities of shape (N, C) for N = {len(labels)} labels; got shape {proba.shape}."
        )
    return proba, labels


def negative_log_likelihood(proba, labels):
    """Returns the mean of -log p(true class) in nats; probabilities are clipped at 1e-12."""
    proba, labels = _checked(proba, labels)
    return float(-np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-12, None)).mean())


def brier_score(proba, labels):
    """Returns the mean over images of sum_c (p_c - [c = true class])^2, from 0 (perfect) to 2."""
    proba, labels = _checked(proba, labels)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def expected_calibration_error(proba, labels, bins=15):
    """Returns the ECE: sum over equal-width confidence bins of (share of images) x |accuracy - mean confidence|."""
    proba, labels = _checked(proba, labels)
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # confidence 1.0 falls in the last bin
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def accuracy_at_coverage(proba, labels, coverages=(0.5, 0.7, 0.8, 0.9, 0.95, 1.0)):
    """Returns {coverage: accuracy on the ceil(coverage N) most confident images}: rejecting the least confident."""
    proba, labels = _checked(proba, labels)
    order = np.argsort(-proba.max(axis=1), kind="stable")
    correct = (proba.argmax(axis=1) == labels)[order]
    return {c: float(correct[: max(1, math.ceil(c * len(labels)))].mean()) for c in coverages}


def uncertainty(proba, labels):
    """Returns NLL, Brier score, ECE and accuracy against coverage of predicted probabilities, as one dict."""
    return {
        "nll": negative_log_likelihood(proba, labels),
        "brier": brier_score(proba, labels),
        "ece": expected_calibration_error(proba, labels),
        "accuracy_at_coverage": {str(c): a for c, a in accuracy_at_coverage(proba, labels).items()},
    }

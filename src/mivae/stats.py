"""Statistics for comparing classifiers on the same test images (thesis §3.6, Figs. 12 and 16)."""

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

    n_differ: int     # N: images on which their predictions differ
    x: float          # fraction of those N on which classifier 1 is right
    z: float          # sqrt(N) (2x - 1): classifier 1 better by z standard deviations (§3.6)
    only_1_right: int  # b: images classifier 1 gets right and classifier 2 wrong
    only_2_right: int  # c: the reverse
    mcnemar_p: float  # two-sided exact McNemar p-value from b and c


def paired_test(predicted_1, predicted_2, labels):
    """Returns the `PairedTest` of two classifiers' predictions on the same labelled images.

    As in §3.6, N counts every image where the predictions differ, including those where
    both are wrong; so z(1 vs 2) is not exactly -z(2 vs 1) when such images exist. McNemar's
    test uses only the images where exactly one of the two is right.
    """
    p1, p2, labels = (np.asarray(a) for a in (predicted_1, predicted_2, labels))
    differ = p1 != p2
    n = int(differ.sum())
    right_1 = int((differ & (p1 == labels)).sum())
    x = right_1 / n if n else 0.5
    b = int(((p1 == labels) & (p2 != labels)).sum())
    c = int(((p1 != labels) & (p2 == labels)).sum())
    return PairedTest(n, x, float(np.sqrt(n) * (2 * x - 1)), b, c, mcnemar_exact(b, c))


def mcnemar_exact(b, c):
    """Returns the two-sided exact McNemar p-value: b successes in b + c fair coin flips, or fewer."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), n, 0.5)))


def class_distribution(predicted, n_classes=10):
    """Returns how many images are assigned to each class, shape (n_classes,) (Figs. 12 and 16)."""
    return np.bincount(np.asarray(predicted), minlength=n_classes)

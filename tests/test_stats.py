import math

import numpy as np
import pytest

from mivae.stats import (
    accuracy,
    accuracy_at_coverage,
    brier_score,
    class_distribution,
    expected_calibration_error,
    mcnemar_exact,
    negative_log_likelihood,
    paired_test,
    uncertainty,
)


def test_paired_test_by_hand():
    # 20 images; predictions differ on 10: classifier 1 right on 7, classifier 2 on 2, both wrong on 1.
    labels = np.zeros(20, dtype=int)
    p1 = np.array([0] * 7 + [1] * 2 + [3] + [0] * 8 + [5] * 2)
    p2 = np.array([1] * 7 + [0] * 2 + [4] + [0] * 8 + [5] * 2)
    t = paired_test(p1, p2, labels)
    assert t.n_differ == 10 and t.x == 7 / 9  # x and z count the 9 images exactly one of them gets right
    assert math.isclose(t.z, math.sqrt(9) * (2 * 7 / 9 - 1)) and math.isclose(t.z, (7 - 2) / 3)
    assert (t.only_1_right, t.only_2_right) == (7, 2)
    assert math.isclose(t.mcnemar_p, 2 * (1 + 9 + 36) / 2**9)  # 2 P(X <= 2), X ~ Bin(9, 1/2)
    reverse = paired_test(p2, p1, labels)
    assert reverse.x == 2 / 9 and math.isclose(reverse.z, -t.z)  # antisymmetric: the image both get wrong is left out
    assert math.isclose(reverse.mcnemar_p, t.mcnemar_p)


def test_images_both_classifiers_get_wrong_do_not_move_z():
    labels = np.zeros(100, dtype=int)
    p1 = np.array([0] * 10 + [1] * 10 + [2] * 80)  # right on 10 images
    p2 = np.array([1] * 10 + [0] * 10 + [3] * 80)  # right on the other 10; both wrong, differently, on 80
    t = paired_test(p1, p2, labels)
    assert t.n_differ == 100 and t.z == 0.0 and t.mcnemar_p == 1.0  # equal accuracy, whatever they do when wrong


def test_identical_predictions_give_z_zero_and_p_one():
    p = np.array([1, 2, 3])
    t = paired_test(p, p, np.array([1, 0, 3]))
    assert (t.n_differ, t.z, t.mcnemar_p) == (0, 0.0, 1.0)


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 10) == 2 / 2**10
    assert mcnemar_exact(5, 5) == 1.0  # capped at one
    assert math.isclose(mcnemar_exact(3, 12), 2 * sum(math.comb(15, k) for k in range(4)) / 2**15)


def test_accuracy_and_class_distribution():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert class_distribution([0, 2, 2, 9], 10).tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1]


def test_perfect_and_uniform_probabilities_score_as_by_hand():
    labels = np.array([0, 1, 2, 1])
    perfect = np.eye(3)[labels]
    assert negative_log_likelihood(perfect, labels) == 0.0 and brier_score(perfect, labels) == 0.0
    assert expected_calibration_error(perfect, labels) == 0.0
    uniform = np.full((4, 10), 0.1)
    assert math.isclose(negative_log_likelihood(uniform, labels), math.log(10))
    assert math.isclose(brier_score(uniform, labels), 0.81 + 9 * 0.01)  # (0.9)^2 + 9 x (0.1)^2
    confidently_wrong = np.eye(3)[[1, 2, 0, 0]]
    assert math.isclose(brier_score(confidently_wrong, labels), 2.0)  # the worst possible


def test_calibration_error_by_hand():
    # Two bins: four images at confidence 0.9 (3 right), two at 0.6 (both wrong).
    proba = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(0.0 - 0.6)
    assert math.isclose(expected_calibration_error(proba, labels, bins=10), expected)


def test_rejecting_the_least_confident_raises_accuracy():
    proba = np.array([[0.99, 0.01], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1])  # the two confident ones are right, the two hesitant ones wrong
    curve = accuracy_at_coverage(proba, labels, coverages=(0.5, 0.75, 1.0))
    assert curve == {0.5: 1.0, 0.75: 2 / 3, 1.0: 0.5}
    summary = uncertainty(proba, labels)
    assert summary["accuracy_at_coverage"]["1.0"] == accuracy(proba.argmax(1), labels)


def test_probabilities_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"shape \(N, C\) for N = 3 labels; got shape \(2, 10\)"):
        brier_score(np.full((2, 10), 0.1), np.array([0, 1, 2]))


def test_the_metrics_agree_with_scikit_learn_and_scipy_where_their_definitions_meet():
    # NLL is kept by hand because it clips at 1e-12 as documented, where log_loss clips at the float's epsilon
    # and renormalises rows; on rows that sum to 1 with no probability under 1e-12 the two are one number.
    from scipy.stats import binomtest
    from sklearn.metrics import accuracy_score, log_loss

    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(10), size=500)
    labels = rng.integers(0, 10, size=500)
    assert negative_log_likelihood(proba, labels) == pytest.approx(log_loss(labels, proba, labels=range(10)), rel=1e-12)
    predicted = proba.argmax(axis=1)
    assert accuracy(predicted, labels) == accuracy_score(labels, predicted)
    for b, c in ((7, 2), (0, 5), (30, 41), (12, 12)):
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-12)

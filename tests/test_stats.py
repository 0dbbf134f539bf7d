import math

import numpy as np

from mivae.stats import accuracy, class_distribution, mcnemar_exact, paired_test


def test_paired_test_by_hand():
    # 20 images; predictions differ on 10: classifier 1 right on 7, classifier 2 on 2, both wrong on 1.
    labels = np.zeros(20, dtype=int)
    p1 = np.array([0] * 7 + [1] * 2 + [3] + [0] * 8 + [5] * 2)
    p2 = np.array([1] * 7 + [0] * 2 + [4] + [0] * 8 + [5] * 2)
    t = paired_test(p1, p2, labels)
    assert t.n_differ == 10 and t.x == 0.7
    assert math.isclose(t.z, math.sqrt(10) * 0.4)  # sqrt(N)(2x - 1)
    assert (t.only_1_right, t.only_2_right) == (7, 2)
    assert math.isclose(t.mcnemar_p, 2 * (1 + 9 + 36) / 2**9)  # 2 P(X <= 2), X ~ Bin(9, 1/2)
    reverse = paired_test(p2, p1, labels)
    # The image where both are wrong counts in N for both orders, so z is not antisymmetric.
    assert reverse.x == 0.2 and math.isclose(reverse.z, math.sqrt(10) * (2 * 0.2 - 1))
    assert math.isclose(reverse.mcnemar_p, t.mcnemar_p)


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

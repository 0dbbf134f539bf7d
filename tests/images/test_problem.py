import numpy as np
import pytest
import torch

from mivae.config import DataConfig
from mivae.images.corruption import corruption_mask
from mivae.images.problem import make_problem


@pytest.fixture(scope="module")
def problem():
    return make_problem(DataConfig(dataset="digits", method="vertical-lines", level=0.5, seed=2))


def test_parts_hold_filled_inputs_clean_targets_masks_and_labels(problem):
    for part in (problem.train, problem.val, problem.test):
        assert part.x.shape == part.clean.shape == part.mask.shape == (len(part), 8, 8)
        assert not torch.isnan(part.x).any()
        assert torch.all(part.x[part.mask] == 1.0)  # white fill, the thesis' policy
        assert torch.equal(part.x[~part.mask], part.clean[~part.mask])  # observed pixels untouched
    assert problem.image_shape == (8, 8) and problem.n_classes == 10


def test_the_test_masks_are_the_corruption_of_the_test_split(problem):
    expected = corruption_mask(len(problem.test), (8, 8), "vertical-lines", 0.5, seed=2, split="test")
    assert np.array_equal(problem.test.mask.numpy(), expected)
    again = make_problem(DataConfig(dataset="digits", method="vertical-lines", level=0.5, seed=2))
    assert torch.equal(again.test.x, problem.test.x)
    assert not torch.equal(problem.train.mask[:50], problem.val.mask[:50])  # each split its own masks


def test_limit_and_other_fill_policies():
    small = make_problem(DataConfig(dataset="digits", level=0.7, limit=100, fill="zero"))
    assert [len(p) for p in (small.train, small.val, small.test)] == [100, 100, 100]
    assert torch.all(small.train.x[small.train.mask] == 0.0)
    mean = make_problem(DataConfig(dataset="digits", level=0.7, limit=100, fill="mean"))
    filled = mean.test.x[mean.test.mask]
    assert 0.0 < filled.mean() < 1.0 and len(torch.unique(filled)) > 5  # per-pixel means, not a constant

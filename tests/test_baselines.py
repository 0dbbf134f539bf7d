import pytest
import torch

from mivae.baselines import IMPUTERS, fit_imputer, impute_part
from mivae.config import DataConfig
from mivae.errors import MivaeError
from mivae.imputation import rmse_on_missing
from mivae.problem import make_problem


@pytest.fixture(scope="module")
def problem():
    return make_problem(DataConfig(dataset="digits", level=0.5))


def test_the_baselines_fill_only_missing_pixels_and_the_smarter_ones_fill_them_better(problem):
    test = problem.test
    rmse = {}
    for name in IMPUTERS:
        completed = impute_part(fit_imputer(name, problem.train), test)
        assert completed.shape == test.clean.shape and not torch.isnan(completed).any()
        assert torch.equal(completed[~test.mask], test.clean[~test.mask])
        rmse[name] = rmse_on_missing(completed, test.clean, test.mask)
    assert rmse["knn"] < rmse["mean"] and rmse["iterative"] < rmse["mean"], rmse


def test_an_unknown_baseline_is_one_sentence(problem):
    with pytest.raises(MivaeError, match="unknown baseline imputer 'median'; known imputers are mean, knn, iterative."):
        fit_imputer("median", problem.train)

import pytest
import torch

from mivae.config import DataConfig
from mivae.errors import MivaeError
from mivae.images.baselines import IMPUTERS, fit_imputer, impute_part
from mivae.images.imputation import rmse_on_missing
from mivae.images.problem import make_problem


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


@pytest.mark.parametrize("name", ["iterative", "knn"])
def test_an_imputer_fill_is_the_imputers_values_where_missing_and_the_observation_elsewhere(name, problem):
    imputed = make_problem(DataConfig(dataset="digits", level=0.5, fill=name))
    expected = impute_part(fit_imputer(name, problem.train, seed=0), problem.test)  # fitted on the same training images
    for part, reference in ((imputed.test, problem.test), (imputed.train, problem.train)):
        assert torch.equal(part.mask, reference.mask) and torch.equal(part.clean, reference.clean)
        assert torch.equal(part.x[~part.mask], part.clean[~part.mask])
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0
    assert torch.allclose(imputed.test.x, expected)
    white = rmse_on_missing(problem.test.x, problem.test.clean, problem.test.mask)
    assert rmse_on_missing(imputed.test.x, problem.test.clean, problem.test.mask) < white / 2


def test_an_unknown_fill_names_every_accepted_one():
    with pytest.raises(
        MivaeError, match="unknown fill policy 'median'; expected one of white, zero, mean, iterative, knn."
    ):
        make_problem(DataConfig(dataset="digits", fill="median"))

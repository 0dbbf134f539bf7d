"""Unit tests of the table schema and encoding, and of the mixed-type VAE's likelihoods and bound."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mivae.models.distributions import gaussian_log_prob, iwae_bound, student_t_log_prob
from mivae.models.tabular import TabularVAE, student_t_quantile
from mivae.tables.schema import CATEGORICAL, CONTINUOUS, Schema, infer_kinds


def frame():
    return pd.DataFrame({"x": [1.0, np.nan, 3.0, 5.0], "c": ["b", "a", None, "b"], "flag": [True, False, True, None]})


def test_kinds_come_from_dtypes_and_declarations():
    assert infer_kinds(frame()) == [CONTINUOUS, CATEGORICAL, CATEGORICAL]
    assert infer_kinds(np.zeros((2, 3)), categorical=[2]) == [CONTINUOUS, CONTINUOUS, CATEGORICAL]
    with pytest.raises(ValueError, match="categorical column 'z' is not in the table"):
        infer_kinds(frame(), categorical=["z"])


def test_encoding_standardises_one_hots_and_masks():
    table = frame()
    schema = Schema.fit(table, infer_kinds(table))
    x = schema.columns[0]
    assert x.mean == pytest.approx(3.0) and x.std == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert schema.columns[1].categories == ("a", "b") and schema.width == 1 + 2 + 2
    values, observed = schema.encode(table)
    np.testing.assert_array_equal(observed, [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]])
    np.testing.assert_allclose(values[:, 0], [(1 - 3) / x.std, 0, 0, (5 - 3) / x.std], rtol=1e-6)
    np.testing.assert_array_equal(values[:, 1:3], [[0, 1], [1, 0], [0, 0], [0, 1]])  # "a", "b"; missing is all zeros


def test_decode_keeps_observed_entries_and_reads_labels_by_argmax():
    table = frame()
    schema = Schema.fit(table, infer_kinds(table))
    guess = np.zeros((4, schema.width), dtype=np.float32)
    guess[:, 0] = 1.0  # one standard deviation above the mean
    guess[:, 1:3] = [0.9, 0.1]  # "a" more probable
    guess[:, 3:5] = [0.2, 0.8]  # True more probable (labels sorted: False, True)
    out = schema.assemble(schema.decode(guess, table), table)
    assert out["x"].tolist() == [1.0, 3.0 + schema.columns[0].std, 3.0, 5.0]
    assert out["c"].tolist() == ["b", "a", "a", "b"] and out["flag"].tolist() == [True, False, True, True]
    assert list(out.columns) == list(table.columns) and (out.index == table.index).all()


def test_student_t_and_gaussian_log_densities_match_scipy():
    x, mean, scale, df = (
        torch.tensor([0.3, -2.0, 5.0]),
        torch.tensor([0.0, 1.0, 2.0]),
        torch.tensor([1.0, 0.5, 3.0]),
        torch.tensor([3.0, 4.5, 30.0]),
    )
    np.testing.assert_allclose(student_t_log_prob(x, mean, scale, df), stats.t.logpdf(x, df, mean, scale), rtol=1e-5)
    np.testing.assert_allclose(gaussian_log_prob(x, mean, scale), stats.norm.logpdf(x, mean, scale), rtol=1e-5)
    u = torch.tensor([-1.5, 0.0, 2.0])
    np.testing.assert_allclose(student_t_quantile(u, df), stats.t.ppf(stats.norm.cdf(u), df), rtol=1e-5)


def test_missing_entries_never_reach_the_likelihood():
    torch.manual_seed(0)
    model = TabularVAE(
        [("continuous", 1), ("categorical", 3), ("continuous", 1)], hidden=(16,), latent=2, likelihood="student-t"
    )
    values = torch.tensor([[0.5, 0.0, 1.0, 0.0, -1.0]])
    observed = torch.tensor([[1.0, 1.0, 0.0]])
    params = model.decode(torch.zeros(1, 2))
    changed = values.clone()
    changed[0, 4] = 100.0  # the missing third column's value is arbitrary
    assert (
        model.log_likelihood(params, values, observed).item() == model.log_likelihood(params, changed, observed).item()
    )


def test_importance_weighted_bound_tightens_with_k():
    torch.manual_seed(0)
    model = TabularVAE([("continuous", 1)] * 4, hidden=(16,), latent=2)
    values, observed = torch.randn(64, 4), (torch.rand(64, 4) > 0.3).float()
    generator = torch.Generator().manual_seed(1)
    bounds = []
    with torch.no_grad():
        for k in (1, 10, 100):
            eps = torch.randn((k, 64, 2), generator=generator)
            bounds.append(iwae_bound(model.log_weights(values, observed, eps)[0]).mean().item())
    assert bounds[0] < bounds[1] < bounds[2]

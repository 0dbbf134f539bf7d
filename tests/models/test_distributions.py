"""The shared mathematics of the models: each function against its closed form or scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mivae.models.distributions import (
    LOGVAR_BOUND,
    bounded_logvar,
    gaussian_conditional,
    gaussian_log_density,
    gaussian_log_prob,
    gaussian_observed_log_density,
    importance_weights,
    iwae_bound,
    kl_divergence,
    reparameterize,
    student_t_log_prob,
)


def test_the_latent_log_variance_is_bounded_both_ways():
    logvar = torch.tensor([-100.0, -3.0, 0.0, 5.0, 100.0])
    assert bounded_logvar(logvar).tolist() == [-LOGVAR_BOUND, -3.0, 0.0, 5.0, LOGVAR_BOUND]
    assert torch.isfinite(torch.exp(bounded_logvar(logvar.bfloat16()))).all()  # never overflows, even in bf16


def test_reparameterize_is_mu_plus_sigma_times_the_noise_given_or_drawn():
    mu, logvar, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]]), torch.tensor([[0.5, 0.5]])
    assert reparameterize(mu, logvar, eps=eps).tolist() == [[1.5, -1.0]]
    drawn = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    again = reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, again)  # seeded by the generator
    many = reparameterize(mu.expand(20000, 2), logvar.expand(20000, 2), torch.Generator().manual_seed(0))
    assert many.mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.05)
    assert many.std(0).tolist() == pytest.approx([1.0, 2.0], abs=0.05)


def test_the_gaussian_densities_match_scipy():
    z, mu, logvar = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.0, 0.5]]), torch.tensor([[0.2, -0.7]])
    expected = stats.norm.logpdf(z.numpy(), mu.numpy(), np.exp(0.5 * logvar.numpy())).sum()
    assert gaussian_log_density(z, mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert gaussian_log_density(z).item() == pytest.approx(stats.norm.logpdf(z.numpy()).sum(), rel=1e-6)
    x, scale = torch.tensor([0.1, 2.0]), torch.tensor([0.5, 3.0])
    np.testing.assert_allclose(gaussian_log_prob(x, 0.0, scale), stats.norm.logpdf(x, 0, scale), rtol=1e-6)
    df = torch.tensor([3.0, 10.0])
    np.testing.assert_allclose(student_t_log_prob(x, 0.0, scale, df), stats.t.logpdf(x, df, 0, scale), rtol=1e-5)


def test_kl_divergence_is_zero_at_the_prior_and_matches_its_closed_form():
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * (1.0 + (2.0 - 1.0 - math.log(2.0))))


def test_the_importance_weighted_bound_and_weights():
    log_w = torch.tensor([[0.0, -1.0], [math.log(3.0), -1.0]])  # K = 2 proposals, B = 2 rows
    assert iwae_bound(log_w).tolist() == pytest.approx([math.log(2.0), -1.0])  # log of the mean weight
    assert iwae_bound(log_w[:1]).tolist() == pytest.approx([0.0, -1.0])  # K = 1: the ELBO itself
    weights = importance_weights(log_w)
    assert weights[:, 0].tolist() == pytest.approx([0.25, 0.75]) and weights[:, 1].tolist() == pytest.approx([0.5, 0.5])


def test_gaussian_conditioning_matches_the_textbook_formulas_for_every_pattern_of_gaps():
    rng = np.random.default_rng(3)
    d = 5
    a = rng.normal(size=(d, d))
    cov, mean = a @ a.T + np.eye(d), rng.normal(size=d)
    x = rng.normal(size=(8, d))
    observed = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], *(rng.random((6, d)) < 0.6)], dtype=float)
    means, factors = gaussian_conditional(*(torch.tensor(v) for v in (mean, cov, x, observed)))
    for row in range(len(x)):
        o, m = observed[row] == 1, observed[row] == 0
        regression = cov[np.ix_(m, o)] @ np.linalg.inv(cov[np.ix_(o, o)])  # empty where nothing or all is seen
        expected_mean = mean[m] + regression @ (x[row, o] - mean[o])
        expected_cov = cov[np.ix_(m, m)] - regression @ cov[np.ix_(o, m)]
        spread = (factors[row] @ factors[row].T).numpy()
        np.testing.assert_allclose(means[row].numpy()[o], x[row, o], atol=1e-12)  # observed: as given
        np.testing.assert_allclose(means[row].numpy()[m], expected_mean, atol=1e-12)
        np.testing.assert_allclose(spread[np.ix_(m, m)], expected_cov, atol=1e-12)
        np.testing.assert_allclose(spread[np.ix_(o, o)], np.eye(o.sum()))  # no spread where observed ...
        assert np.abs(spread[np.ix_(o, m)]).max(initial=0) < 1e-12  # ... and none shared with the gaps
    np.testing.assert_allclose(means[1].numpy(), mean)  # nothing observed: the marginal
    np.testing.assert_allclose((factors[1] @ factors[1].T).numpy(), cov, atol=1e-12)


def test_the_density_of_the_observed_entries_is_scipys_on_each_row_s_observed_block():
    rng = np.random.default_rng(5)
    d = 4
    a = rng.normal(size=(d, d))
    cov, mean = a @ a.T + 0.5 * np.eye(d), rng.normal(size=d)
    x = rng.normal(size=(6, d))
    observed = np.array([[1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]], float)
    got = gaussian_observed_log_density(*(torch.tensor(v) for v in (mean, cov, x, observed))).numpy()
    for row, value in enumerate(got):
        o = observed[row] == 1
        expected = stats.multivariate_normal(mean[o], cov[np.ix_(o, o)]).logpdf(x[row, o]) if o.any() else 0.0
        assert value == pytest.approx(expected, abs=1e-10)

"""The shared mathematics of the models: each function against its closed form or scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mivae.models.distributions import (
    LOGVAR_BOUND,
    bounded_logvar,
    factor_observed_log_density,
    factor_posterior,
    gaussian_log_density,
    gaussian_log_prob,
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


def _factor_model(rng, d=5, latent=2):
    """(bias, weight, scale) of a factor model, and its covariance W W^T + diag(scale^2)."""
    bias, weight, scale = rng.normal(size=d), rng.normal(size=(d, latent)), rng.uniform(0.3, 1.5, size=d)
    return (bias, weight, scale), weight @ weight.T + np.diag(scale**2)


def test_the_factor_posterior_gives_the_textbook_gaussian_conditional_for_every_pattern_of_gaps():
    rng = np.random.default_rng(3)
    (bias, weight, scale), cov = _factor_model(rng)
    x = rng.normal(size=(8, 5))
    observed = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], *(rng.random((6, 5)) < 0.6)], dtype=float)
    means, factors = factor_posterior(*(torch.tensor(v) for v in (bias, weight, scale, x, observed)))
    for row in range(len(x)):
        o, m = observed[row] == 1, observed[row] == 0
        regression = cov[np.ix_(m, o)] @ np.linalg.inv(cov[np.ix_(o, o)])  # empty where nothing or all is seen
        expected_mean = bias[m] + regression @ (x[row, o] - bias[o])
        expected_cov = cov[np.ix_(m, m)] - regression @ cov[np.ix_(o, m)]
        # the gaps are W z + bias + noise with z from the posterior: mean W mu + bias, cov W M^-1 W^T + diag(scale^2)
        precision = (factors[row] @ factors[row].T).numpy()
        latent_cov = np.linalg.inv(precision)
        np.testing.assert_allclose(weight[m] @ means[row].numpy() + bias[m], expected_mean, atol=1e-12)
        np.testing.assert_allclose(
            weight[m] @ latent_cov @ weight[m].T + np.diag(scale[m] ** 2), expected_cov, atol=1e-12
        )
        np.testing.assert_allclose(precision, np.eye(2) + weight[o].T @ np.diag(scale[o] ** -2.0) @ weight[o])
    np.testing.assert_allclose(means[1].numpy(), 0, atol=1e-15)  # nothing observed: the prior
    np.testing.assert_allclose((factors[1] @ factors[1].T).numpy(), np.eye(2))


def test_the_factor_model_density_of_the_observed_entries_is_scipys_on_each_row_s_observed_block():
    rng = np.random.default_rng(5)
    (bias, weight, scale), cov = _factor_model(rng, d=4)
    x = rng.normal(size=(6, 4))
    observed = np.array([[1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]], float)
    got = factor_observed_log_density(*(torch.tensor(v) for v in (bias, weight, scale, x, observed))).numpy()
    for row, value in enumerate(got):
        o = observed[row] == 1
        expected = stats.multivariate_normal(bias[o], cov[np.ix_(o, o)]).logpdf(x[row, o]) if o.any() else 0.0
        assert value == pytest.approx(expected, abs=1e-10)

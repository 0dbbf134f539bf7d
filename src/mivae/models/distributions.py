"""The distributions every model here shares: the diagonal Gaussian latent and its reparameterisation, the
densities of the decoders' heads, and the importance-weighted bound with its self-normalised weights.

Log densities come in two forms: `gaussian_log_density` of a latent vector (summed over its last dimension,
parametrised by the log variance, as an encoder gives it) and `gaussian_log_prob` of each entry of a table row
(elementwise, parametrised by the scale, as a decoder head gives it). Where a model's p(x) is a factor model's
Gaussian (a linear decoder), the density of a row's observed entries and the posterior of its latent, hence the
conditional of its gaps, are exact (`factor_observed_log_density`, `factor_posterior`).
"""

import math

import torch

LOGVAR_BOUND = 12.0  # |log variance| of a latent at most this: exp(logvar) never overflows, even in bf16


def bounded_logvar(logvar):
    """Returns the log variance clamped to [-LOGVAR_BOUND, LOGVAR_BOUND]."""
    return logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)


def reparameterize(mu, logvar, generator=None, eps=None):
    """Returns z = mu + sigma * eps (thesis §2.2.2), with eps ~ N(0, I) drawn here unless given (broadcast to mu)."""
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_density(z, mu=None, logvar=None):
    """Returns log N(z; mu, diag(exp(logvar))) summed over the last dimension (the standard normal by default)."""
    if mu is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def kl_divergence(mu, logvar):
    """Returns KL(N(mu, sigma) || N(0, I)) per row (B,) (thesis eq. 2.9)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def gaussian_log_prob(x, mean, scale):
    """Returns log N(x; mean, scale^2), elementwise."""
    return -0.5 * ((x - mean) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)


def student_t_log_prob(x, mean, scale, df):
    """Returns the log density of Student's t with `df` degrees of freedom, location `mean` and scale `scale`,
    elementwise."""
    t = (x - mean) / scale
    return (
        torch.lgamma((df + 1) / 2)
        - torch.lgamma(df / 2)
        - 0.5 * torch.log(df * math.pi)
        - scale.log()
        - (df + 1) / 2 * torch.log1p(t.pow(2) / df)
    )


def iwae_bound(log_w):
    """Returns log (1/K) sum_k w_k per row (B,) from log weights (K, B): the importance-weighted bound (Burda et
    al. 2016), the ELBO for K = 1."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def importance_weights(log_w):
    """Returns the self-normalised importance weights (K, B): non-negative, summing to one over K."""
    return torch.softmax(log_w, dim=0)


def _posterior_factor(weight, scale, observed):
    """Returns (observed (B, d) in weight's dtype, each row's precisions (B, d): 1 / scale^2 where observed, 0 in the
    gaps, and the Cholesky factors (B, L, L) of the latent's posterior precisions I + W^T diag(precision_b) W)."""
    o = observed.to(weight.dtype)
    precision = o / scale**2
    eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return o, precision, torch.linalg.cholesky(eye + torch.einsum("dl,bd,dk->blk", weight, precision, weight))


def factor_observed_log_density(bias, weight, scale, values, observed):
    """Returns log N(x_o; bias_o, (W W^T + diag(scale^2))_oo) per row (B,): the density of each row's observed
    entries under the factor model x = W z + bias + scale * noise, z ~ N(0, I_L) (probabilistic PCA's p(x)), its
    gaps integrated out. `values` (B, d) hold the observed entries where `observed` (B, d) is 1. By the Woodbury
    identity it goes through (L, L) matrices per row, never a (d, d) one."""
    o, precision, factor = _posterior_factor(weight, scale, observed)
    gap = (values.to(weight.dtype) - bias) * o
    projected = torch.linalg.solve_triangular(factor, ((gap * precision) @ weight)[:, :, None], upper=False)
    quadratic = (gap * gap * precision).sum(1) - projected.square().sum((1, 2))  # gap^T cov_oo^-1 gap
    log_det = 2 * torch.log(torch.diagonal(factor, dim1=1, dim2=2)).sum(1) + (o * torch.log(scale**2)).sum(1)
    return -0.5 * (quadratic + log_det + o.sum(1) * math.log(2 * math.pi))


def factor_posterior(bias, weight, scale, values, observed):
    """Returns (means (B, L), Cholesky factors C (B, L, L) of the precisions) of p(z | x_o) under the factor model
    of `factor_observed_log_density`: the precision is M = I + W_o^T diag(scale_o^-2) W_o and the mean M^-1 W_o^T
    diag(scale_o^-2) (x_o - bias_o). A draw of z is mean + C^-T eps; the gaps then follow as W z + bias + scale *
    noise, so their conditional mean is W mean + bias, exactly that of the Gaussian p(x_m | x_o)."""
    _, precision, factor = _posterior_factor(weight, scale, observed)
    weighted = ((values.to(weight.dtype) - bias) * precision) @ weight  # (B, L)
    return torch.cholesky_solve(weighted[:, :, None], factor).squeeze(-1), factor

"""The distributions every model here shares: the diagonal Gaussian latent and its reparameterisation, the
densities of the decoders' heads, and the importance-weighted bound with its self-normalised weights.

Log densities come in two forms: `gaussian_log_density` of a latent vector (summed over its last dimension,
parametrised by the log variance, as an encoder gives it) and `gaussian_log_prob` of each entry of a table row
(elementwise, parametrised by the scale, as a decoder head gives it). Where a model's p(x) is a full Gaussian
(a linear decoder), the density of a row's observed entries and the conditional of its gaps are exact
(`gaussian_observed_log_density`, `gaussian_conditional`).
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


def _embedded(cov, observed):
    """Returns (B, d, d): each row's cov_oo on its observed block and the identity where it has gaps, so that one
    batched factorisation or solve serves every pattern of gaps."""
    o = observed.to(cov.dtype)
    return cov * (o[:, :, None] * o[:, None, :]) + torch.diag_embed(1 - o)


def gaussian_observed_log_density(mean, cov, values, observed):
    """Returns log N(x_o; mean_o, cov_oo) per row (B,): the density of each row's observed entries under N(mean,
    cov), its gaps integrated out. `values` (B, d) hold the observed entries where `observed` (B, d) is 1."""
    o = observed.to(cov.dtype)
    factor = torch.linalg.cholesky(_embedded(cov, o))  # the identity block adds nothing to the log determinant
    gap = ((values.to(cov.dtype) - mean) * o)[:, :, None]
    quadratic = (gap * torch.cholesky_solve(gap, factor)).sum((1, 2))
    log_det = 2 * torch.log(torch.diagonal(factor, dim1=1, dim2=2)).sum(1)
    return -0.5 * (quadratic + log_det + o.sum(1) * math.log(2 * math.pi))


def gaussian_conditional(mean, cov, values, observed):
    """Returns (conditional means (B, d), Cholesky factors (B, d, d)) of N(mean, cov) given each row's observed
    entries: `values` (B, d) hold them where `observed` (B, d) is 1.

    The means are the observed values where observed and mean_m + cov_mo cov_oo^-1 (x_o - mean_o) where missing;
    the factors are those of the conditional covariance cov_mm - cov_mo cov_oo^-1 cov_om over the missing entries,
    with identity rows and columns at the observed ones (so mean + (factor @ eps) * (1 - observed) is a draw).
    """
    o = observed.to(cov.dtype)
    m = 1 - o
    gap = (values.to(cov.dtype) - mean) * o
    solved = torch.linalg.solve(_embedded(cov, o), torch.cat([gap[:, :, None], o[:, :, None] * cov], dim=2))
    means = mean + (cov @ solved[:, :, :1]).squeeze(-1)  # the observed values, and the regression of the rest
    conditional = cov - cov @ solved[:, :, 1:]  # zero on the observed block, cov_mm - cov_mo cov_oo^-1 cov_om
    missing = m[:, :, None] * m[:, None, :]
    return means, torch.linalg.cholesky(conditional * missing + torch.diag_embed(o))

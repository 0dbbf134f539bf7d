"""A VAE for table rows of mixed types with missing entries, trained on the observed entries alone.

The row arrives encoded (mivae.tables.schema): values (B, W), zero where missing, beside observed (B, C),
1 where column c is observed. The encoder sees both; the decoder gives, per continuous column, a
Gaussian or Student-t (Mattei and Frellsen 2019 use the latter for UCI tables) with a mean and a
scale (and degrees of freedom), and per categorical column a softmax over its labels. The decoder is an
MLP mirroring the encoder, or linear in z with a scale per column (`LinearDecoder`, probabilistic PCA's).

For K samples z_k ~ q(z | x_obs, s) the log importance weights are

    log w_k = sum over observed columns of log p(x_j | z_k) + log p(z_k) - log q(z_k | x_obs, s)

and log (1/K) sum_k w_k is the importance-weighted bound on log p(x_obs) (MIWAE; the masked ELBO
for K = 1). Noise comes in as tensors so that a caller can share it across rows (common random
numbers make an imputation a fixed function of its row) or draw it anew for every row.

With a `missingness` model the VAE is not-MIWAE's (Ipsen, Mattei and Frellsen 2021): it models the pattern
of gaps too, p(x, s) = p(x) p(s | x), where values go missing because of what they are. Each proposal k
then also draws the missing continuous values x_miss_k ~ p(x_miss | z_k), and its weight gains

    log p(s | x_obs, x_miss_k) = sum over columns of log p(s_j | x_j),

the self-masking model (`SelfMasking`): per continuous column a logistic in the column's own value,
per categorical column a probability of being observed for each label (a missing label is summed out
exactly, so it needs no draw). The bound is then on log p(x_obs, s).
"""

import torch
from scipy import special
from torch import nn
from torch.nn import functional as F

from mivae.models.distributions import gaussian_log_density, gaussian_log_prob, reparameterize, student_t_log_prob
from mivae.models.vae import GaussianVAE

LIKELIHOODS = ("gaussian", "student-t")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}  # of the hidden layers
# The decoders: an MLP mirroring the encoder, or linear as probabilistic PCA's (`LinearDecoder`).
DECODERS = ("mlp", "linear")
# The self-masking models: a continuous column's slope free in sign, or known: its high (low) values go missing more.
MISSINGNESS = ("self-masking", "self-masking-high", "self-masking-low")
MIN_SCALE = 1e-3  # the default smallest decoder scale in standardised units, as Mattei and Frellsen 2019
MIN_DF = 3.0  # the smallest degrees of freedom of a Student-t head: its variance stays finite


class TabularVAE(GaussianVAE):
    """A mask-aware VAE over encoded rows with the given column `layout` of (kind, width) pairs."""

    def __init__(
        self,
        layout,
        hidden=(128, 128),
        latent=8,
        likelihood="gaussian",
        missingness=None,
        activation="relu",
        decoder="mlp",
        min_scale=MIN_SCALE,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}.")
        if missingness not in (None, *MISSINGNESS):
            raise ValueError(f"unknown missingness model {missingness!r}; expected one of {', '.join(MISSINGNESS)}.")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}.")
        layout = tuple(layout)
        kinds = [kind for kind, _ in layout]
        # Which encoded slot belongs to which column, and where the continuous slots and categorical blocks sit.
        column_of_slot = [j for j, (_, w) in enumerate(layout) for _ in range(w)]
        starts = [sum(w for _, w in layout[:j]) for j in range(len(layout))]
        blocks = [(j, s, w) for j, (s, (kind, w)) in enumerate(zip(starts, layout)) if kind == "categorical"]
        heads = (3 if likelihood == "student-t" else 2) * kinds.count("continuous") + sum(w for _, _, w in blocks)
        inputs = len(column_of_slot) + len(layout)  # values and the observed mask
        super().__init__(inputs, hidden, latent, heads, ACTIVATIONS[activation])
        self.layout, self.likelihood, self.blocks = layout, likelihood, blocks
        # The continuous heads' smallest scale, in standardised units: the floor keeps a Gaussian from concentrating
        # on values a column repeats exactly (a pixel's 0), where the density, unbounded, rewards spikes.
        self.min_scale = float(min_scale)
        self.n_continuous = kinds.count("continuous")
        if decoder == "linear":
            per_column = 2 if likelihood == "student-t" else 1  # the scale, and the degrees of freedom
            self.decoder = LinearDecoder(latent, self.n_continuous, per_column, heads)
        self.missingness = missingness
        if missingness is not None:
            self.self_masking = SelfMasking(self.n_continuous, [w for _, _, w in blocks], missingness)
        self.continuous_columns = [j for j, kind in enumerate(kinds) if kind == "continuous"]
        self.register_buffer("column_of_slot", torch.tensor(column_of_slot, dtype=torch.long), persistent=False)
        self.register_buffer(
            "continuous_slots",
            torch.tensor([s for s, (kind, _) in zip(starts, layout) if kind == "continuous"], dtype=torch.long),
            persistent=False,
        )

    def encode(self, values, observed):
        """Returns (mu, logvar), each (B, L) float32, of q(z | x_obs, s)."""
        mu, logvar = self.posterior(torch.cat([values * observed[:, self.column_of_slot], observed], dim=1))
        return mu.float(), logvar.float()

    def decode(self, z):
        """Returns the decoder's parameters for latents z (..., L): a dict of mean, scale, df (..., continuous)
        and logits, a list of (..., labels) per categorical column."""
        out = self.decoder(z).float()
        n = self.n_continuous
        # softplus of a contiguous copy: on a strided slice torch's CPU kernel took 9x as long (BENCHMARKS.md)
        params = {"mean": out[..., :n], "scale": F.softplus(out[..., n : 2 * n].contiguous()) + self.min_scale}
        offset = 2 * n
        if self.likelihood == "student-t":
            params["df"] = F.softplus(out[..., offset : offset + n].contiguous()) + MIN_DF
            offset += n
        params["logits"] = []
        for _, _, w in self.blocks:
            params["logits"].append(out[..., offset : offset + w])
            offset += w
        return params

    def log_likelihood(self, params, values, observed):
        """Returns log p(x_obs | z) (..., B) summed over the observed columns of encoded rows (B, W)."""
        total = torch.zeros(params["mean"].shape[:-1], device=values.device)
        if self.n_continuous:
            x = values[:, self.continuous_slots]
            if self.likelihood == "student-t":
                log_p = student_t_log_prob(x, params["mean"], params["scale"], params["df"])
            else:
                log_p = gaussian_log_prob(x, params["mean"], params["scale"])
            total = total + (log_p * observed[:, self.continuous_columns]).sum(-1)
        for (j, s, w), logits in zip(self.blocks, params["logits"]):
            # the one-hot block is all zeros where the column is missing, so it adds nothing there
            total = total + (values[:, s : s + w] * F.log_softmax(logits, dim=-1)).sum(-1) * observed[:, j]
        return total

    def log_weights(self, values, observed, eps, noise=None):
        """Returns (log w (K, B), decoder params) for standard normal noise eps (K, B or 1, L).

        With a missingness model, the missing continuous values of each proposal are drawn from p(x | z_k):
        by the inverse CDF of standard normal `noise` (K, B or 1, n_continuous) where it is given, by
        reparameterised sampling (differentiable, for training) where it is None. The params then also hold
        those draws, "drawn" (K, B, n_continuous), and "tilted": the labels' logits tilted by the chance of their
        going missing, log p(label | z_k) p(missing | label), per categorical column.
        """
        mu, logvar = self.encode(values, observed)
        z = reparameterize(mu, logvar, eps=eps)  # (K, B, L)
        params = self.decode(z)
        # log q(z | x) = log N(eps; 0, I) - sum(logvar) / 2 at z = mu + sigma * eps: the same value and gradients as
        # the density of z, in fewer passes over (K, B, L)
        log_q = gaussian_log_density(eps) - 0.5 * logvar.sum(-1)
        log_w = self.log_likelihood(params, values, observed) + gaussian_log_density(z) - log_q
        if self.missingness is not None:
            params["drawn"] = self._continuous_draws(params, noise)
            kept = observed[:, self.continuous_columns]
            completed = values[:, self.continuous_slots] * kept + params["drawn"] * (1 - kept)
            labels = [values[:, s : s + w] for _, s, w in self.blocks]
            label_observed = [observed[:, j] for j, _, _ in self.blocks]
            log_ps, params["tilted"] = self.self_masking(completed, kept, params["logits"], labels, label_observed)
            log_w = log_w + log_ps
        return log_w, params

    def _continuous_draws(self, params, noise):
        """Returns continuous values (..., n_continuous) drawn from p(x | z): by the inverse CDF of standard normal
        `noise`, or by reparameterised sampling where it is None."""
        mean, scale = params["mean"], params["scale"]
        if noise is not None:
            quantile = student_t_quantile(noise, params["df"]) if self.likelihood == "student-t" else noise
            return mean + scale * quantile
        if self.likelihood == "student-t":
            return torch.distributions.StudentT(params["df"], mean, scale).rsample()
        return mean + scale * torch.randn_like(mean)

    def draw_missing(self, params, candidates_noise, uniform_pick, uniform_categorical):
        """Returns encoded rows (..., B, W) drawn from p(x | z, every column missing) under the missingness model, for
        the params of one proposal per row (with "tilted"). A continuous value is resampled from R draws of
        p(x_j | z) (standard normal `candidates_noise` (R, ..., B, n_continuous)) in proportion to its chance of
        going missing, by the uniform `uniform_pick` (..., B, n_continuous); a label is drawn from its tilted
        distribution by `uniform_categorical` (..., B, n_categorical). Only the missing columns are used."""
        candidates = self._continuous_draws(params, candidates_noise)  # (R, ..., B, n_continuous)
        cdf = torch.softmax(self.self_masking.log_missing(candidates), dim=0).cumsum(0)
        pick = (cdf < uniform_pick).sum(0, keepdim=True).clamp(max=len(candidates) - 1)
        chosen = candidates.gather(0, pick)[0]
        resampled = {**params, "mean": chosen, "scale": torch.zeros_like(chosen), "logits": params["tilted"]}
        return self.draw(resampled, torch.zeros_like(chosen), uniform_categorical)

    def factor_model(self):
        """Returns (bias (n,), weight (n, L), scale (n,)), float64, where p(x) is the Gaussian of the factor model x =
        W z + bias + scale * noise (probabilistic PCA's N(bias, W W^T + diag(scale^2))): a linear decoder with
        Gaussian heads over continuous columns alone and no missingness model; None for any other model."""
        if not isinstance(self.decoder, LinearDecoder) or self.likelihood != "gaussian":
            return None
        if self.blocks or self.missingness is not None:
            return None
        n = self.n_continuous
        weight, bias = self.decoder.affine.weight[:n].double(), self.decoder.affine.bias[:n].double()
        return bias, weight, F.softplus(self.decoder.constant.double()) + self.min_scale  # as `decode` makes it

    def means(self, params):
        """Returns the expected encoded row (..., B, W) under decoder params: continuous means, label probabilities."""
        if not self.blocks:  # every column continuous: the encoding is the means, in column order
            return params["mean"]
        parts = [
            params["mean"][..., [self.continuous_columns.index(j)]]
            if kind == "continuous"
            else torch.softmax(params["logits"][[b[0] for b in self.blocks].index(j)], dim=-1)
            for j, (kind, _) in enumerate(self.layout)
        ]
        return torch.cat(parts, dim=-1)

    def draw(self, params, noise_continuous, uniform_categorical):
        """Returns encoded rows (..., B, W) drawn from p(x | z), by inverse CDF of the given noise: standard normal
        (..., n_continuous) for the continuous heads and uniform (..., n_categorical) for the labels."""
        mean, scale = params["mean"], params["scale"]
        if self.likelihood == "student-t":
            continuous = mean + scale * student_t_quantile(noise_continuous, params["df"])
        else:
            continuous = mean + scale * noise_continuous
        if not self.blocks:  # every column continuous, as in `means`
            return continuous
        parts, b = [], 0
        for j, (kind, w) in enumerate(self.layout):
            if kind == "continuous":
                parts.append(continuous[..., [self.continuous_columns.index(j)]])
            else:
                cdf = torch.softmax(params["logits"][b], dim=-1).cumsum(-1)
                label = (cdf < uniform_categorical[..., [b]]).sum(-1).clamp(max=w - 1)
                parts.append(F.one_hot(label, w).to(cdf.dtype))
                b += 1
        return torch.cat(parts, dim=-1)


class LinearDecoder(nn.Module):
    """The decoder of probabilistic PCA (Tipping and Bishop 1999), as the not-MIWAE paper's PPCA model: the means
    and label logits affine in z, and each continuous column's scale (and degrees of freedom) a number of its own,
    the same for every z. Its outputs are laid out as the MLP decoder's: means, scales, [df], logits.

    Where the columns hang together linearly (measurements of one size, as in iris), a linear model extrapolates
    beyond the observed values the way the truth does, which matters where the large values are the missing ones.
    """

    def __init__(self, latent, n_continuous, per_column, outputs):
        super().__init__()
        self.n_continuous = n_continuous
        self.affine = nn.Linear(latent, outputs - per_column * n_continuous)
        self.constant = nn.Parameter(torch.zeros(per_column * n_continuous))

    def forward(self, z):
        out = self.affine(z)
        constant = self.constant.to(out.dtype).expand(*out.shape[:-1], -1)
        n = self.n_continuous
        return torch.cat([out[..., :n], constant, out[..., n:]], dim=-1)


class SelfMasking(nn.Module):
    """p(s | x) for self-masking missingness: every column's chance of being observed depends on its own value.

    A continuous column j is observed with probability sigmoid(-a_j (x_j - b_j)) (Ipsen, Mattei and Frellsen
    2021): a_j > 0, its high values go missing more often; a_j < 0, its low values. `kind` "self-masking" learns
    the sign, "self-masking-high" and "self-masking-low" fix it (a_j = +-softplus). A categorical column is observed
    with probability sigmoid(c_jl) for label l.
    """

    def __init__(self, n_continuous, label_counts, kind="self-masking"):
        super().__init__()
        self.kind = kind
        self.slope = nn.Parameter(torch.zeros(n_continuous))
        self.shift = nn.Parameter(torch.zeros(n_continuous))
        self.label_logits = nn.Parameter(torch.zeros(sum(label_counts)))
        self.label_counts = list(label_counts)

    def slopes(self):
        """The slopes a (n_continuous,) in standardised units."""
        if self.kind == "self-masking":
            return self.slope
        return (1 if self.kind == "self-masking-high" else -1) * F.softplus(self.slope)

    def log_missing(self, continuous):
        """Returns log p(missing | x) (..., n_continuous) of continuous values, log sigmoid(a (x - b))."""
        return F.logsigmoid(self.slopes() * (continuous - self.shift))

    def forward(self, continuous, continuous_observed, logits, labels, label_observed):
        """Returns (log p(s | x) (..., B), the label logits tilted for missing labels).

        continuous (..., B, n_continuous): each column's value, observed or drawn; continuous_observed (B,
        n_continuous) 1 where observed. logits: the decoder's (..., B, labels) per categorical column; labels
        the one-hot (B, labels) and label_observed (B,) of each. A missing label is summed out:
        p(missing) = sum_l p(l | z) sigmoid(-c_l).
        """
        log_missing = self.log_missing(continuous)
        log_observed = F.logsigmoid(-self.slopes() * (continuous - self.shift))
        log_ps = (log_observed * continuous_observed + log_missing * (1 - continuous_observed)).sum(-1)
        tilted = []
        for c, decoded, onehot, seen in zip(self.label_logits.split(self.label_counts), logits, labels, label_observed):
            log_p = F.log_softmax(decoded, dim=-1)
            log_missing = F.logsigmoid(-c) + log_p  # log p(l | z) p(missing | l), (..., B, labels)
            log_ps = log_ps + (onehot * F.logsigmoid(c)).sum(-1) * seen + torch.logsumexp(log_missing, -1) * (1 - seen)
            tilted.append(log_missing)
        return log_ps, tilted


def student_t_quantile(normal, df):
    """Returns the Student-t quantiles (df degrees of freedom) at the probabilities of standard normal draws."""
    u = special.ndtr(normal.double().cpu().numpy())
    return torch.from_numpy(special.stdtrit(df.double().cpu().numpy(), u)).to(normal)

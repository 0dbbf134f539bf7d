"""VAEs that learn from incomplete images alone: MIWAE (Mattei and Frellsen 2019) and not-MIWAE
(Ipsen, Mattei and Frellsen 2021).

Inputs are mask-aware: (B, 2, H, W) with channel 0 the values, 0 where missing, and channel 1
1 where observed, 0 where missing; no value is ever mistaken for an observation. The decoder's Bernoulli
likelihood covers observed pixels only, so training never needs a clean image.

For K samples z_k ~ q(z | x_obs, s), the log importance weights are

    log w_k = log p(x_obs | z_k) + log p(z_k) - log q(z_k | x_obs, s)      (MIWAE)
            + log p(s | x_obs, x_miss_k)                                      (not-MIWAE)

and log (1/K) sum_k w_k is the importance-weighted bound on log p(x_obs) (or log p(x_obs, s)),
which is the masked ELBO for K = 1 and tightens as K grows. not-MIWAE's missingness model is
self-masking, one logistic per pixel: p(missing_j | x_j) = sigmoid(-a_j (x_j - b_j)); its
x_miss_k is the decoder's mean for the missing pixels (a Bernoulli draw has no gradient).

Local refinement (`refine` > 0): a latent of 20 numbers cannot hold where each stroke's edge lies, which
the observed pixels around a missing one tell. A small convolutional network (5x5 then two 3x3 layers,
`refine` channels) reads a completed guess beside the observed pixels and their mask and returns
p(x_j | guess, x_obs) for every pixel, as a correction to the guess's logits. It learns from incomplete
images alone: in training a fraction `holdout` of each image's observed pixels (single pixels, or whole
columns for `holdout_shape="columns"`, to mimic the missingness the model will meet) is hidden from the
encoder and from the network, which is scored on the hidden pixels; the bound is taken over the pixels
left visible. The guess is the importance-weighted mean of the decoder (single imputation) or one
resampled proposal (multiple imputation); training shows it either, half the images each.
"""

import torch
from torch import nn
from torch.nn import functional as F

from mivae.models.distributions import gaussian_log_density, importance_weights, iwae_bound, reparameterize
from mivae.models.vae import VAE


class MIWAE(VAE):
    """An importance-weighted VAE for images of `image_shape` (H, W) with missing pixels: the VAE's encoder (of
    mask-aware inputs) and decoder, trained on the importance-weighted bound of the observed pixels.

    `missingness` is None (MIWAE: missing at random is assumed) or "self-masking" (not-MIWAE).
    """

    def __init__(
        self, image_shape, hidden=(512, 512), latent=20, missingness=None, refine=0, holdout=0.3, holdout_shape="pixels"
    ):
        if missingness not in (None, "self-masking"):
            raise ValueError(f"unknown missingness model {missingness!r}")
        if refine and missingness:
            raise ValueError("local refinement is for MIWAE and the masked ELBO, not for a missingness model")
        if holdout_shape not in ("pixels", "columns") or not 0 < holdout < 1:
            raise ValueError(
                f"holdout must be in (0, 1) and its shape pixels or columns; got {holdout}, {holdout_shape!r}"
            )
        super().__init__(image_shape, hidden, latent, channels=2)
        self.missingness = missingness
        if missingness == "self-masking":
            self.mask_scale = nn.Parameter(torch.zeros(self.image_shape))  # a_j
            self.mask_shift = nn.Parameter(torch.full(self.image_shape, 0.5))  # b_j
        self.holdout, self.holdout_shape = holdout, holdout_shape
        self.refine = (
            nn.Sequential(
                nn.Conv2d(3, refine, 5, padding=2),
                nn.ReLU(),
                nn.Conv2d(refine, refine, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(refine, 1, 3, padding=1),
            )
            if refine
            else None
        )

    def sample_latents(self, inputs, samples, generator=None):
        """Returns z (K, B, L) drawn from q(z | x_obs, s), with mu and logvar (B, L)."""
        mu, logvar = self.encode(inputs)
        eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        return reparameterize(mu, logvar, eps=eps), mu, logvar

    def log_weights(self, inputs, samples, generator=None):
        """Returns (log w (K, B), decoder logits (K, B, H, W)) for mask-aware inputs (B, 2, H, W)."""
        values, observed = inputs[:, 0], inputs[:, 1]
        z, mu, logvar = self.sample_latents(inputs, samples, generator)
        logits = self.decode_logits(z)  # (K, B, H, W)
        log_px = -(F.binary_cross_entropy_with_logits(logits, values.expand_as(logits), reduction="none") * observed)
        log_w = log_px.flatten(2).sum(-1)  # log p(x_obs | z_k)
        log_w = log_w + gaussian_log_density(z) - gaussian_log_density(z, mu, logvar)  # + log p(z) - log q(z | x)
        if self.missingness == "self-masking":
            completed = complete(inputs, torch.sigmoid(logits))  # x_obs with x_miss_k filled in
            missing_logit = -self.mask_scale * (completed - self.mask_shift)
            missing = (1 - observed).expand_as(missing_logit)
            log_ps = -F.binary_cross_entropy_with_logits(missing_logit, missing, reduction="none")
            log_w = log_w + log_ps.flatten(2).sum(-1)
        return log_w, logits

    def fill(self, inputs, guess):
        """Returns the images of mask-aware inputs (B, 2, H, W) completed from `guess` (..., B, H, W), the decoder's
        mean or a mixture of means: the guess itself, or with local refinement the network's correction of it."""
        completed = complete(inputs, guess)
        if self.refine is None:
            return completed
        guesses = completed.flatten(0, -3)  # (... * B, H, W), inputs repeated to match
        logits = self.refined_logits(guesses, inputs.repeat(len(guesses) // len(inputs), 1, 1, 1))
        return complete(inputs, torch.sigmoid(logits).view_as(completed))

    def refined_logits(self, completed, inputs):
        """Returns the logits (B, H, W) of p(x | guess, x_obs) from completed guesses (B, H, W) and mask-aware
        inputs."""
        assert self.refine is not None, "refined_logits needs a model built with refine > 0"
        guess = completed.clamp(1e-4, 1 - 1e-4)
        features = torch.cat([guess.unsqueeze(1), inputs], 1).contiguous(
            memory_format=torch.channels_last
        )  # 2x faster here
        return self.refine(features).squeeze(1) + torch.logit(guess)

    def forward(self, inputs):
        """Returns the single imputation of mask-aware inputs: observed pixels kept, missing ones by self-normalised
        importance sampling."""
        return impute_importance(
            self, inputs, samples=50, generator=torch.Generator(device=inputs.device).manual_seed(0)
        )


def complete(inputs, fill):
    """Returns the images of mask-aware inputs (B, 2, H, W) with `fill` (..., B, H, W) in their missing pixels.

    The second channel of the inputs is 1 where observed; observed pixels are kept exactly.
    """
    values, observed = inputs[:, 0], inputs[:, 1]
    return values * observed + fill * (1 - observed)


def miwae_loss(model, inputs, targets=None, samples=5):
    """Returns the batch mean of the negative importance-weighted bound with K = `samples` (the masked ELBO for K = 1).

    With local refinement: the bound over the visible pixels, plus the refinement's negative log-likelihood of
    the held-out ones.
    """
    if model.refine is None:
        log_w, _ = model.log_weights(inputs, samples)
        return -iwae_bound(log_w).mean()
    visible, held = hold_out(inputs, model.holdout, model.holdout_shape)
    log_w, logits = model.log_weights(visible, samples)
    with (
        torch.no_grad()
    ):  # the guess: the weighted mean of the proposals for half the images, one resampled for the rest
        weights, means = importance_weights(log_w.float()), torch.sigmoid(logits.float())
        mean = (weights[..., None, None] * means).sum(0)
        pick = torch.multinomial(weights.T, 1).squeeze(1)
        drawn = means[pick, torch.arange(len(pick), device=pick.device)]
        guess = complete(visible, torch.where(torch.rand(len(pick), 1, 1, device=pick.device) < 0.5, mean, drawn))
    refined = model.refined_logits(guess, visible)
    log_p_held = (
        -(F.binary_cross_entropy_with_logits(refined, inputs[:, 0], reduction="none") * held).flatten(1).sum(-1)
    )
    return -(iwae_bound(log_w) + log_p_held).mean()


def hold_out(inputs, fraction, shape="pixels"):
    """Returns (the mask-aware inputs with a `fraction` of the observed pixels hidden, the hidden pixels (B, H, W)).

    `shape` "pixels" hides single pixels, "columns" whole columns, each independently.
    """
    observed = inputs[:, 1] > 0
    size = observed.shape if shape == "pixels" else (len(observed), 1, observed.shape[-1])
    held = (torch.rand(size, device=inputs.device) < fraction) & observed
    visible = (observed & ~held).to(inputs.dtype)
    return torch.stack([inputs[:, 0] * visible, visible], 1), held.to(inputs.dtype)


@torch.no_grad()
def impute_importance(model, inputs, samples=50, generator=None):
    """Returns E[x | x_obs] (B, H, W) by self-normalised importance sampling: observed pixels are kept exactly."""
    log_w, logits = model.log_weights(inputs, samples, generator)
    return model.fill(inputs, (importance_weights(log_w)[..., None, None] * torch.sigmoid(logits)).sum(0))


@torch.no_grad()
def impute_multiple(model, inputs, imputations, samples=50, generator=None):
    """Returns (M, B, H, W) imputations by sampling-importance-resampling from K = `samples` proposals.

    Each imputation picks a proposal k with probability w_k and fills the missing pixels with its
    decoder mean (refined, with local refinement); observed pixels are kept exactly.
    """
    log_w, logits = model.log_weights(inputs, samples, generator)
    picks = torch.multinomial(
        importance_weights(log_w).T.float(), imputations, replacement=True, generator=generator
    )  # (B, M)
    rows = torch.arange(len(inputs), device=picks.device)[:, None]
    chosen = torch.sigmoid(logits).permute(1, 0, 2, 3)[rows, picks]  # (B, M, H, W)
    return model.fill(inputs, chosen.transpose(0, 1))


@torch.no_grad()
def classify_importance(model, classifier, inputs, samples=50, generator=None, weighted=True):
    """Returns p(y | x_obs) (B, C): sum_k w_k p(y | x_k) over K completed images x_k (supMIWAE's estimate).

    With `weighted` false, the uniform mean over the K samples of q, as the thesis' multiple imputation.
    `classifier` maps completed images (N, H, W) to logits.
    """
    log_w, logits = model.log_weights(inputs, samples, generator)
    completed = model.fill(inputs, torch.sigmoid(logits))  # (K, B, H, W)
    proba = torch.softmax(classifier(completed.flatten(0, 1)).float(), dim=-1).unflatten(0, log_w.shape)  # (K, B, C)
    weights = importance_weights(log_w) if weighted else torch.full_like(log_w, 1 / len(log_w))
    return (weights[..., None] * proba).sum(0)


class MIWAEClassifier(nn.Module):
    """A trained MIWAE or not-MIWAE with fixed weights, then a trainable classifier on its imputations.

    In training mode every step sees one imputation per image resampled (SIR) from `samples`
    proposals; in eval mode, the single imputation by self-normalised importance sampling with
    `eval_samples` proposals. `classify_importance` gives the importance-weighted p(y | x_obs).
    """

    def __init__(self, imputer, classifier, samples=5, eval_samples=50):
        super().__init__()
        self.imputer = imputer.requires_grad_(False)
        self.classifier = classifier
        self.samples, self.eval_samples = samples, eval_samples

    def train(self, mode=True):
        super().train(mode)
        self.imputer.eval()  # frozen: never in training mode
        return self

    def forward(self, inputs):
        if self.training:
            images = impute_multiple(self.imputer, inputs, imputations=1, samples=self.samples)[0]
        else:  # the same proposals on every call: the single imputation is a fixed function of the input
            generator = torch.Generator(device=inputs.device).manual_seed(0)
            images = impute_importance(self.imputer, inputs, self.eval_samples, generator)
        return self.classifier(images)

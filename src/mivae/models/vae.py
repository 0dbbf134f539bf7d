"""The variational autoencoder of thesis §2.2 and §3.3, and its loss.

Dense encoder and decoder with the same number of hidden ReLU layers (the decoder
mirrors the encoder), a diagonal Gaussian latent of dimension L, a sigmoid output.
Images go in and come out with shape (B, H, W).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def dense_stack(sizes):
    """Returns Linear+ReLU layers through `sizes` (the first entry is the input width)."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A VAE for images of `image_shape` (H, W) with values in [0, 1]."""

    def __init__(self, image_shape, hidden=(512, 512), latent=20, channels=1):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(self.image_shape)
        self.encoder = dense_stack([channels * pixels, *hidden])  # channels = 2: mask-aware inputs (B, 2, H, W)
        self.to_mu = nn.Linear(hidden[-1], latent)
        self.to_logvar = nn.Linear(hidden[-1], latent)
        self.decoder = nn.Sequential(dense_stack([latent, *reversed(hidden)]), nn.Linear(hidden[0], pixels))

    def encode(self, x):
        """Returns (mu, logvar), each (B, L), of q(z | x) for images x (B, H, W) or mask-aware inputs (B, 2, H, W)."""
        h = self.encoder(x.flatten(1))
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 12.0)  # bounded: exp(logvar) never overflows

    def decode_logits(self, z):
        """Returns the Bernoulli logits (..., H, W) of p(x | z) for latents z (..., L)."""
        return self.decoder(z).unflatten(-1, self.image_shape)

    def decode(self, z):
        """Returns the decoded images (..., H, W) in [0, 1] for latents z (..., L)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x):
        """Returns (reconstruction logits, mu, logvar) with one reparametrised sample per image."""
        mu, logvar = self.encode(x)
        return self.decode_logits(reparameterize(mu, logvar)), mu, logvar


def reparameterize(mu, logvar, generator=None):
    """Returns z = mu + sigma * eps with eps ~ N(0, I) (thesis §2.2.2)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def reconstruction_loss(logits, target):
    """Returns the binary cross-entropy summed over pixels, per image (B,) (thesis eq. 2.2, summed)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def gaussian_log_density(z, mu=None, logvar=None):
    """Returns log N(z; mu, diag(exp(logvar))) summed over the last dimension (the standard normal by default)."""
    if mu is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def kl_divergence(mu, logvar):
    """Returns KL(N(mu, sigma) || N(0, I)) per image (B,) (thesis eq. 2.9)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def negative_elbo(logits, target, mu, logvar):
    """Returns the negative ELBO per image (B,) in nats (thesis eq. 2.8): reconstruction + KL."""
    return reconstruction_loss(logits, target) + kl_divergence(mu, logvar)

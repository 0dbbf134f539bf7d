"""The variational autoencoder of thesis §2.2 and §3.3, and its loss.

Dense encoder and decoder with the same number of hidden ReLU layers (the decoder
mirrors the encoder), a diagonal Gaussian latent of dimension L, a sigmoid output.
Images go in and come out with shape (B, H, W).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from mivae.models.distributions import bounded_logvar, kl_divergence, reparameterize


def dense_stack(sizes, activation=nn.ReLU):
    """Returns Linear layers through `sizes` (the first entry is the input width), each followed by `activation`."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers)


class GaussianVAE(nn.Module):
    """The frame every VAE here shares: a dense ReLU encoder of `inputs` numbers to a diagonal Gaussian q(z | x)
    of dimension `latent`, and a dense decoder mirroring it to `outputs` numbers (the heads of p(x | z)); its hidden
    layers' `activation` may be another (the tables' VAE offers tanh, as the not-MIWAE paper's networks have)."""

    def __init__(self, inputs, hidden, latent, outputs, activation=nn.ReLU):
        super().__init__()
        self.encoder = dense_stack([inputs, *hidden], activation)
        self.to_mu = nn.Linear(hidden[-1], latent)
        self.to_logvar = nn.Linear(hidden[-1], latent)
        layers = dense_stack([latent, *reversed(hidden)], activation)
        self.decoder: nn.Module = nn.Sequential(layers, nn.Linear(hidden[0], outputs))

    def posterior(self, flat):
        """Returns (mu, logvar), each (B, L), of q(z | x) for flat inputs (B, inputs); logvar bounded."""
        h = self.encoder(flat)
        return self.to_mu(h), bounded_logvar(self.to_logvar(h))


class VAE(GaussianVAE):
    """A VAE for images of `image_shape` (H, W) with values in [0, 1]."""

    def __init__(self, image_shape, hidden=(512, 512), latent=20, channels=1):
        pixels = math.prod(image_shape)
        super().__init__(channels * pixels, hidden, latent, pixels)  # channels = 2: mask-aware inputs (B, 2, H, W)
        self.image_shape = tuple(image_shape)

    def encode(self, x):
        """Returns (mu, logvar), each (B, L), of q(z | x) for images x (B, H, W) or mask-aware inputs (B, 2, H, W)."""
        return self.posterior(x.flatten(1))

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


def reconstruction_loss(logits, target):
    """Returns the binary cross-entropy summed over pixels, per image (B,) (thesis eq. 2.2, summed)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def negative_elbo(logits, target, mu, logvar):
    """Returns the negative ELBO per image (B,) in nats (thesis eq. 2.8): reconstruction + KL."""
    return reconstruction_loss(logits, target) + kl_divergence(mu, logvar)

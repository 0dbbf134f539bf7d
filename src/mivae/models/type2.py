"""Type 2 classifiers (thesis §3.3-3.4, Fig. 7): a frozen VAE, then a classifier on its imputations."""

import torch
from torch import nn

from mivae.models.distributions import reparameterize


class VAEClassifier(nn.Module):
    """A trained VAE with fixed weights followed by a trainable classifier.

    In training mode every forward pass draws z ~ N(mu, sigma) anew, so the classifier
    learns from ever different imputations; in eval mode it sees the single imputation
    decode(mu). Multiple imputation at test time is `mivae.images.imputation.multiple_imputation`.
    """

    def __init__(self, vae, classifier):
        super().__init__()
        self.vae = vae.requires_grad_(False)
        self.classifier = classifier

    def train(self, mode=True):
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    def impute(self, x, sample, generator=None):
        """Returns imputed images (B, H, W): decode(z) with z ~ N(mu, sigma) if `sample`, else z = mu."""
        with torch.no_grad():
            mu, logvar = self.vae.encode(x)
            return self.vae.decode(reparameterize(mu, logvar, generator) if sample else mu)

    def forward(self, x):
        return self.classifier(self.impute(x, sample=self.training))

"""Model architectures, built from their configs; no training code lives here."""

from mivae.config import CNNConfig, MIWAEConfig, MLPConfig, VAEConfig
from mivae.errors import MivaeError
from mivae.models.classifiers import CNN, MLP
from mivae.models.miwae import MIWAE
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE

KINDS = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn", "miwae", "not-miwae")
SEARCHABLE = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn")   # the kinds of §3.5's model selection
INCOMPLETE = ("miwae", "not-miwae")                        # learn from incomplete images alone
CONFIGS = {"vae": VAEConfig, "mlp": MLPConfig, "cnn": CNNConfig, "miwae": MIWAEConfig, "not-miwae": MIWAEConfig}


def classifier_kind(kind):
    """Returns the classifier part of a model kind: 'vae+mlp' -> 'mlp'."""
    return kind.removeprefix("vae+")


def build_model(kind, config, image_shape, n_classes=10, vae=None):
    """Returns an untrained model of `kind` from its `config`; Type 2 kinds wrap the trained `vae`."""
    if kind in INCOMPLETE:
        return MIWAE(image_shape, config.hidden, config.latent, "self-masking" if kind == "not-miwae" else None)
    channels = 2 if config.mask_input else 1
    if kind == "vae":
        return VAE(image_shape, config.hidden, config.latent, channels)
    if kind.startswith("vae+") and config.mask_input:
        raise MivaeError(f"a {kind} classifier sees the VAE's complete imputations; mask_input applies to its VAE.")
    if kind == "mlp" or kind == "vae+mlp":
        classifier = MLP(image_shape, n_classes, config.hidden, channels)
    elif kind == "cnn" or kind == "vae+cnn":
        classifier = CNN(image_shape, n_classes, config.dense, config.dropout_conv, config.dropout_dense, channels)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return VAEClassifier(vae, classifier) if kind.startswith("vae+") else classifier

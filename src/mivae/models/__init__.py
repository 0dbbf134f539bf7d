"""Model architectures, built from their configs; no training code lives here."""

from torch import nn

from mivae.config import CNNConfig, MIWAEConfig, MLPConfig, VAEConfig
from mivae.errors import MivaeError
from mivae.models.classifiers import CNN, MLP
from mivae.models.miwae import MIWAE, MIWAEClassifier
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE

INCOMPLETE = ("miwae", "not-miwae")  # learn from incomplete images alone
IMPUTERS = ("vae", *INCOMPLETE)  # generative models a Type 2 classifier is built on
KINDS = (*IMPUTERS, "mlp", "cnn", *(f"{i}+{c}" for i in IMPUTERS for c in ("mlp", "cnn")))
SEARCHABLE = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn")  # the kinds of §3.5's model selection
CONFIGS = {"vae": VAEConfig, "mlp": MLPConfig, "cnn": CNNConfig, "miwae": MIWAEConfig, "not-miwae": MIWAEConfig}


def classifier_kind(kind):
    """Returns the classifier part of a model kind: 'vae+mlp' -> 'mlp', 'miwae' -> 'miwae'."""
    return kind.rsplit("+", 1)[-1]


def imputer_kind(kind):
    """Returns the generative model a Type 2 kind is built on ('not-miwae+cnn' -> 'not-miwae'), else None."""
    return kind.split("+")[0] if "+" in kind else None


def initialise(module, init):
    """Returns `module` with its Linear and Conv2d layers drawn anew by the scheme `init` (mivae.config.INITS).

    "glorot": Keras' default, Glorot-uniform weights U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) and zero
    biases (Glorot and Bengio 2010). "torch": PyTorch's own, as the layers were built.
    """
    if init == "glorot":
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return module


def build_model(kind, config, image_shape, n_classes=10, vae=None, imputer_config=None):
    """Returns an untrained model of `kind` from its `config`; Type 2 kinds wrap the trained imputer `vae`.

    MIWAE-based Type 2 kinds take the imputer's config too, for its numbers of importance samples.
    """
    if kind in INCOMPLETE:
        if kind == "not-miwae" and config.refine:
            raise MivaeError("local refinement (refine) is for miwae, not for not-miwae's missingness model.")
        return MIWAE(
            image_shape,
            config.hidden,
            config.latent,
            "self-masking" if kind == "not-miwae" else None,
            config.refine,
            config.holdout,
            config.holdout_shape,
        )
    channels = 2 if config.mask_input else 1
    if kind == "vae":
        return initialise(VAE(image_shape, config.hidden, config.latent, channels), config.init)
    imputer = imputer_kind(kind)
    if imputer and config.mask_input:
        raise MivaeError(f"a {kind} classifier sees the imputer's complete images; mask_input applies to the imputer.")
    classifier: nn.Module
    if classifier_kind(kind) == "mlp":
        classifier = MLP(image_shape, n_classes, config.hidden, channels)
    elif classifier_kind(kind) == "cnn":
        classifier = CNN(image_shape, n_classes, config.dense, config.dropout_conv, config.dropout_dense, channels)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    initialise(classifier, config.init)
    if imputer == "vae":
        return VAEClassifier(vae, classifier)
    if imputer in INCOMPLETE:
        return MIWAEClassifier(vae, classifier, imputer_config.samples, imputer_config.eval_samples)
    return classifier

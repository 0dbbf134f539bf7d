"""Model architectures, built from their configs by kind (models.kinds); no training code lives here."""

from torch import nn

from mivae.errors import MivaeError
from mivae.models.classifiers import CNN, MLP
from mivae.models.kinds import KINDS, SEARCHABLE, Kind, kind_of
from mivae.models.miwae import MIWAE, MIWAEClassifier
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE


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
    k = kind_of(kind)
    if k.incomplete:
        if k.part == "not-miwae" and config.refine:
            raise MivaeError("local refinement (refine) is for miwae, not for not-miwae's missingness model.")
        return MIWAE(
            image_shape,
            config.hidden,
            config.latent,
            "self-masking" if k.part == "not-miwae" else None,
            config.refine,
            config.holdout,
            config.holdout_shape,
        )
    channels = 2 if config.mask_input else 1
    if k.generative:
        return initialise(VAE(image_shape, config.hidden, config.latent, channels), config.init)
    if k.imputer and config.mask_input:
        raise MivaeError(f"a {kind} classifier sees the imputer's complete images; mask_input applies to the imputer.")
    classifier: nn.Module
    if k.part == "mlp":
        classifier = MLP(image_shape, n_classes, config.hidden, channels)
    else:
        classifier = CNN(image_shape, n_classes, config.dense, config.dropout_conv, config.dropout_dense, channels)
    initialise(classifier, config.init)
    if k.imputer == "vae":
        return VAEClassifier(vae, classifier)
    if k.on_incomplete_imputer:
        return MIWAEClassifier(vae, classifier, imputer_config.samples, imputer_config.eval_samples)
    return classifier


__all__ = ["KINDS", "SEARCHABLE", "Kind", "build_model", "initialise", "kind_of"]

"""Every model kind as one record: what it trains, what it is built on, what scores it and which way is better.

Code reads these records (`KINDS[name]`); nothing parses a kind's name.
"""

from dataclasses import dataclass

from mivae.config import CNNConfig, MIWAEConfig, MLPConfig, VAEConfig
from mivae.errors import MivaeError


@dataclass(frozen=True)
class Kind:
    """One model kind, as the CLI and run directories name it ("vae", "mlp", "miwae+cnn")."""

    name: str
    part: str  # what is trained, and whose config the run holds: vae, miwae, not-miwae, mlp or cnn
    imputer: str | None  # the frozen generative model a Type 2 classifier is built on; None for the rest
    config: type  # the config dataclass of `part`
    score: str  # what scores it on validation images, in search logs and reports
    higher_is_better: bool  # the direction of that score
    searchable: bool  # one of the kinds of §3.5's model selection

    @property
    def generative(self):
        """Whether it models the images (a VAE, MIWAE or not-MIWAE) rather than classifying them."""
        return self.imputer is None and self.part in GENERATIVE

    @property
    def vae(self):
        """Whether it is the thesis' VAE (§2.2), which learns from whole or imputed images."""
        return self.generative and self.part == "vae"

    @property
    def incomplete(self):
        """Whether it is a generative model that learns from incomplete images alone (MIWAE, not-MIWAE)."""
        return self.generative and self.part in INCOMPLETE

    @property
    def classifier(self):
        """Whether it classifies images: a Type 1 classifier, or a Type 2 one on an imputer's images."""
        return not self.generative

    @property
    def on_incomplete_imputer(self):
        """Whether it is a Type 2 classifier on a MIWAE's or not-MIWAE's imputations."""
        return self.imputer in INCOMPLETE


GENERATIVE = ("vae", "miwae", "not-miwae")  # what a Type 2 classifier can be built on
INCOMPLETE = ("miwae", "not-miwae")
CLASSIFIERS = ("mlp", "cnn")
_CONFIGS = {"vae": VAEConfig, "miwae": MIWAEConfig, "not-miwae": MIWAEConfig, "mlp": MLPConfig, "cnn": CNNConfig}
_SEARCHABLE = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn")


def _kind(part, imputer=None):
    name = f"{imputer}+{part}" if imputer else part
    if part == "vae":
        score, higher = "negative ELBO per image", False
    elif part in INCOMPLETE:
        score, higher = "negative importance-weighted bound per image", False
    else:
        score, higher = "accuracy", True
    return Kind(name, part, imputer, _CONFIGS[part], score, higher, name in _SEARCHABLE)


KINDS = {
    k.name: k
    for k in [
        *(_kind(g) for g in GENERATIVE),
        *(_kind(c) for c in CLASSIFIERS),
        *(_kind(c, g) for g in GENERATIVE for c in CLASSIFIERS),
    ]
}
SEARCHABLE = tuple(name for name, k in KINDS.items() if k.searchable)


def kind_of(name):
    """Returns the Kind named `name`; raises MivaeError naming the kinds there are."""
    if name not in KINDS:
        raise MivaeError(f"unknown model kind {name!r}; the kinds are {', '.join(KINDS)}.")
    return KINDS[name]

"""Configuration: one frozen dataclass per component, filled from files and flags strictly.

An unknown key or a value of the wrong type is a `MivaeError` naming the key, what was
expected and what was received; nothing is silently ignored.
"""

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from mivae.errors import MivaeError, check_choice, check_whole
from mivae.hardware import PRECISIONS, check_device, resolve_device


def _require(condition, message):
    if not condition:
        raise MivaeError(message)


# The largest sizes a config may ask for. A config read from a file (a run directory shared by anyone) is checked
# against them before any network is built, so that a typing error or a crafted file is refused in one sentence
# instead of allocating hundreds of gigabytes. Each is far above anything the thesis or mivae's searches use.
MAX_LAYERS = 16  # hidden layers of one network
MAX_WIDTH = 65_536  # nodes of one layer
MAX_LATENT = 4_096  # latent dimensions
MAX_SAMPLES = 100_000  # importance samples per image
MAX_BATCH = 1 << 20  # images per batch


def _check_layers(name, hidden):
    _require(
        0 < len(hidden) <= MAX_LAYERS and all(1 <= n <= MAX_WIDTH for n in hidden),
        f"{name} needs 1 to {MAX_LAYERS} layers of 1 to {MAX_WIDTH:,} nodes; got {list(hidden)}.",
    )


def _check_rates(lr, l2):
    _require(
        math.isfinite(lr) and math.isfinite(l2) and lr > 0 and l2 >= 0,
        f"lr must be above 0 and l2 at least 0, both finite; got lr {lr}, l2 {l2}.",
    )


# Marks a field added after runs were saved with its config: left out of the config's dict while at its
# default, so older runs load with the same architecture digest and study units keep their keys.
ADDED_LATER = {"omit_at_default": True}


# How a new model's weights are drawn: "glorot" is Keras' default (Glorot-uniform weights, zero biases), the
# framework the thesis' models were built in; "torch" is PyTorch's (Kaiming-uniform with a = sqrt(5), uniform biases).
INITS = ("glorot", "torch")


def _check_init(value):
    check_choice("init", value, INITS)


def _check_rate(name, value):
    _require(0.0 <= value < 1.0, f"{name} must be in [0, 1); got {value}.")


@dataclass(frozen=True)
class DataConfig:
    """Which data, corrupted how: the problem a model is trained and tested on."""

    dataset: str = "mnist"  # mnist, fashion-mnist or digits
    method: str = "random-pixels"  # corruption method (thesis §3.2)
    level: float = 0.5  # corruption level cl in [0, 1)
    fill: str = "white"  # what a model sees in a missing pixel (white = 1.0, the thesis)
    exact: bool = False  # exactly round(cl * p) missing units instead of D draws
    seed: int = 0  # seeds the split and the corruption masks
    clean_train: bool = False  # train and validate on clean images (thesis Tables 6 and 7)
    limit: int | None = None  # use only the first `limit` images of each split (quick runs)

    def __post_init__(self):
        check_whole("seed", self.seed)
        check_whole("limit", self.limit, 1, also=(None,))


@dataclass(frozen=True)
class VAEConfig:
    """The (denoising) variational autoencoder of §2.2 and §3.3."""

    hidden: tuple[int, ...] = (512, 512)  # nodes per hidden ReLU layer of the encoder; the decoder mirrors them
    latent: int = 20  # L, the dimension of the Gaussian latent space
    lr: float = 1e-3  # Adam learning rate
    l2: float = 0.0  # coefficient of the summed squared weights added to the loss
    denoising: bool = True  # reconstruct the clean image (§2.2.3), not the corrupted input
    mask_input: bool = False  # the encoder sees zero-filled values and the mask, not the white fill
    init: str = "glorot"  # weight initialisation (INITS); glorot chosen by measurement, docs/reproduction.md

    def __post_init__(self):
        _check_layers("hidden", self.hidden)
        check_whole("latent", self.latent, 1, high=MAX_LATENT)
        _check_rates(self.lr, self.l2)
        _check_init(self.init)


@dataclass(frozen=True)
class MIWAEConfig:
    """An importance-weighted VAE that learns from incomplete images alone (MIWAE; not-MIWAE adds a missingness
    model)."""

    hidden: tuple[int, ...] = (512, 512)  # nodes per hidden ReLU layer of the encoder; the decoder mirrors them
    latent: int = 20  # L, the dimension of the Gaussian latent space
    lr: float = 1e-3  # Adam learning rate
    l2: float = 0.0  # coefficient of the summed squared weights added to the loss
    samples: int = 5  # K: importance samples per image in the training bound
    eval_samples: int = 50  # K for validation, test bounds and imputation
    refine: int = dataclasses.field(default=0, metadata=ADDED_LATER)  # channels of the local refinement; 0: none
    holdout: float = dataclasses.field(default=0.3, metadata=ADDED_LATER)  # observed pixels held out to train it
    holdout_shape: str = dataclasses.field(default="pixels", metadata=ADDED_LATER)  # held out as pixels or columns

    def __post_init__(self):
        _check_layers("hidden", self.hidden)
        check_whole("latent", self.latent, 1, high=MAX_LATENT)
        _check_rates(self.lr, self.l2)
        check_whole("samples", self.samples, 1, high=MAX_SAMPLES)
        check_whole("eval_samples", self.eval_samples, 1, high=MAX_SAMPLES)
        check_whole("refine", self.refine, high=MAX_WIDTH)
        _require(0 < self.holdout < 1, f"holdout must be in (0, 1); got {self.holdout}.")
        check_choice("holdout_shape", self.holdout_shape, ("pixels", "columns"))


@dataclass(frozen=True)
class MLPConfig:
    """The multilayer perceptron of §3.3 and appendix A."""

    hidden: tuple[int, ...] = (512, 512)  # nodes per hidden ReLU layer; the thesis searches 2, 3 and 4 layers
    l2: float = 1e-5  # coefficient of the summed squared weights added to the loss
    lr: float = 1.0  # AdaDelta learning rate (Zeiler 2012 uses 1.0)
    mask_input: bool = False  # see zero-filled values and the mask (2 x pixels inputs), not the fill
    init: str = "torch"  # weight initialisation (INITS); torch learned faster here, docs/reproduction.md

    def __post_init__(self):
        _check_layers("hidden", self.hidden)
        _check_init(self.init)
        _check_rates(self.lr, self.l2)


@dataclass(frozen=True)
class CNNConfig:
    """The convolutional network of §3.3 and appendix B: 32 and 64 3x3 filters, 2x2 max-pooling."""

    dropout_conv: float = 0.25  # dropout rate before the dense layer
    dense: int = 128  # nodes of the dense ReLU layer
    dropout_dense: float = 0.5  # dropout rate after the dense layer
    l2: float = 0.0  # coefficient of the summed squared weights added to the loss
    lr: float = 1.0  # AdaDelta learning rate
    mask_input: bool = False  # see zero-filled values and the mask as a second channel, not the fill
    init: str = "glorot"  # weight initialisation (INITS); glorot is the Keras example's, which §3.3's CNN is

    def __post_init__(self):
        _check_init(self.init)
        _check_rate("dropout_conv", self.dropout_conv)
        _check_rate("dropout_dense", self.dropout_dense)
        check_whole("dense", self.dense, 1, high=MAX_WIDTH)
        _check_rates(self.lr, self.l2)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted: mini-batches, early stopping, seed, device."""

    epochs: int = 50  # most epochs; with no validation set, exactly this many
    patience: int = 5  # epochs without a better validation score before stopping
    min_delta: float = 0.0  # the least gain in the validation score that resets the patience: a plateau's
    # noise (a VAE's ELBO wandering by hundredths of a nat) does not keep training alive
    min_epochs: int = 10  # epochs before early stopping may end training: AdaDelta on mostly-white inputs
    # starts with a flat stretch of several epochs (docs/reproduction.md)
    batch_size: int = 128  # images per gradient step
    seed: int = 0  # seeds initialisation, shuffling and latent samples
    device: str = "auto"  # cpu, cuda or cuda:N; auto: the GPU where torch sees one, else the CPU
    precision: str = "auto"  # matmul precision: bf16 where the hardware runs it natively, else fp32
    eval_batch_size: int = 4096  # images per forward pass when evaluating

    def __post_init__(self):
        check_whole("min_epochs", self.min_epochs)
        _require(
            math.isfinite(self.min_delta) and self.min_delta >= 0,
            f"min_delta must be a number of at least 0; got {self.min_delta}.",
        )
        for name in ("epochs", "patience"):
            check_whole(name, getattr(self, name), 1)
        for name in ("batch_size", "eval_batch_size"):
            check_whole(name, getattr(self, name), 1, high=MAX_BATCH)
        check_whole("seed", self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        # "auto" is settled here, so a saved run names the device it ran on; a named GPU is checked where it is used
        # (hardware.resolve_device), so a run trained on one can be read on a machine without.
        device = check_device(self.device)
        object.__setattr__(self, "device", str(resolve_device()) if device == "auto" else device)


def _describe(tp):
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key):
    """Returns `value` as type `tp`, or raises MivaeError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MivaeError(f"{key} must be a list of {_describe(item)}; got {value!r}.")
        return tuple(_coerce(v, item, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise MivaeError(f"{key} must be true or false; got {value!r}.")
    if tp in (int, float):
        what, allowed = ("a whole number", (int, str)) if tp is int else ("a number", (int, float, str))
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise MivaeError(f"{key} must be {what}; got {value!r}.")
        try:
            return tp(value)
        except ValueError:
            raise MivaeError(f"{key} must be {what}; got {value!r}.") from None
    if tp is str:
        if not isinstance(value, str):
            raise MivaeError(f"{key} must be a string; got {value!r}.")
        return value
    raise TypeError(f"unsupported config field type {tp}")  # a mivae bug, not a user's


def from_dict(cls, mapping, section=None):
    """Returns a `cls` built from `mapping`, refusing unknown keys and wrong types."""
    section = section or cls.__name__
    if not isinstance(mapping, dict):
        raise MivaeError(f"[{section}] must be a table of settings; got {mapping!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise MivaeError(f"unknown setting {unknown[0]!r} in [{section}]; known settings are {', '.join(names)}.")
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in mapping.items()})


def replace(config, **changes):
    """Returns `config` with `changes` applied strictly (None values are ignored, as unset flags)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    merged = {**dataclasses.asdict(config), **changes}
    return from_dict(type(config), merged)


def to_dict(config):
    """Returns `config` as plain JSON-ready values, without the fields ADDED_LATER that hold their default."""
    values = dataclasses.asdict(config)
    for field in dataclasses.fields(config):
        if field.metadata.get("omit_at_default") and values[field.name] == field.default:
            del values[field.name]
    return json.loads(json.dumps(values))


def read_config_file(path):
    """Returns the tables of a TOML or JSON config file as a dict of dicts."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise MivaeError(f"cannot read the config file {path}: {e.strerror or e}.") from None
    try:
        content = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise MivaeError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}.") from None
    if not isinstance(content, dict):
        raise MivaeError(f"{path} must hold tables of settings, like [model] and [train].")
    return content

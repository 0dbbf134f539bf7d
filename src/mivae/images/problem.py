"""A classification problem with missing values: the splits of a dataset, corrupted and filled, as tensors.

`make_problem(DataConfig)` is the one place where data, corruption and fill policy meet.
Every split is corrupted with its own deterministic masks (seed, split name, method,
level), so the test images are identical for every model built on the same config.

A fill is a constant (`white`, `zero`), the per-pixel mean of the observed training pixels
(`mean`, what scikit-learn's SimpleImputer does), or a scikit-learn imputer fitted on the
first `IMPUTER_FIT_IMAGES` corrupted training images (`iterative`, `knn`; see `mivae.images.baselines`).
"""

import dataclasses
from dataclasses import dataclass

import torch

from mivae.errors import MivaeError
from mivae.images.corruption import FILL_POLICIES, check_level, check_method, corrupt, fill, pixel_means
from mivae.images.data import DATASETS, load_splits

IMPUTER_FILLS = ("iterative", "knn")
FILLS = FILL_POLICIES + IMPUTER_FILLS
IMPUTER_FIT_IMAGES = 10_000  # IterativeImputer's fit on these stays under a minute (BENCHMARKS.md)


@dataclass(frozen=True)
class CorruptedSplit:
    """A `Split` of `mivae.images.data` corrupted and filled, as tensors ready for models: what they see, what it
    should be, and where it was missing."""

    x: torch.Tensor  # (N, H, W) float32: the filled, corrupted images a model sees
    clean: torch.Tensor  # (N, H, W) float32: the uncorrupted images (the denoising target)
    mask: torch.Tensor  # (N, H, W) bool: True where a pixel is missing
    y: torch.Tensor  # (N,) int64 labels

    def __len__(self):
        return len(self.y)

    def to(self, device):
        return CorruptedSplit(self.x.to(device), self.clean.to(device), self.mask.to(device), self.y.to(device))

    def inputs(self, clean=False, with_mask=False):
        """What a model sees: the filled images, or the clean ones; `with_mask`: (N, 2, H, W) by `mask_aware`."""
        x, mask = (self.clean, torch.zeros_like(self.mask)) if clean else (self.x, self.mask)
        return mask_aware(x, mask) if with_mask else x


def mask_aware(values, mask):
    """Returns the (N, 2, H, W) input of a mask-aware model: values zeroed where `mask` (True = missing), and
    a second channel that is 1 where a pixel was observed and 0 where it is missing.

    No value stands in for a missing pixel: whatever `values` holds there (a fill, NaN) is replaced by 0,
    and the second channel tells the model it is missing. The channel marks the observed pixels, not the
    missing ones: inputs that are mostly ones stall training at high missingness (BENCHMARKS.md,
    "Measurements behind the defaults").
    """
    observed = 1 - mask.to(values.dtype)
    return torch.stack([torch.nan_to_num(values) * observed, observed], dim=1)


@dataclass(frozen=True)
class Problem:
    """Train, validation and test parts of one corrupted dataset."""

    train: CorruptedSplit
    val: CorruptedSplit
    test: CorruptedSplit
    image_shape: tuple[int, int]
    n_classes: int


def check_data(config):
    """Returns the `DataConfig` `config` after checking that it names a dataset, a corruption and a fill mivae has."""
    if config.dataset not in DATASETS:
        raise MivaeError(f"unknown dataset {config.dataset!r}; expected one of {', '.join(DATASETS)}.")
    if config.fill not in FILLS:
        raise MivaeError(f"unknown fill policy {config.fill!r}; expected one of {', '.join(FILLS)}.")
    check_method(config.method)
    check_level(config.level)
    return config


def make_problem(config, data_dir=None):
    """Returns the `Problem` described by a `DataConfig`: load, split, corrupt, fill."""
    check_data(config)
    splits = load_splits(config.dataset, data_dir, seed=config.seed)
    corrupted = {
        s.name: corrupt(
            s.images[: config.limit], config.method, config.level, seed=config.seed, split=s.name, exact=config.exact
        )
        for s in splits
    }
    means = pixel_means(corrupted["train"]) if config.fill == "mean" else None
    policy = "white" if config.fill in IMPUTER_FILLS else config.fill  # replaced by the imputer's values below
    parts = {}
    for s in splits:
        c = corrupted[s.name]
        parts[s.name] = CorruptedSplit(
            x=torch.from_numpy(fill(c, policy, means)),
            clean=torch.from_numpy(s.images[: config.limit]),
            mask=torch.from_numpy(c.mask),
            y=torch.from_numpy(s.labels[: config.limit]),
        )
    if config.fill in IMPUTER_FILLS:
        from mivae.images.baselines import fit_imputer, impute_part  # scikit-learn loads only when a problem needs it

        imputer = fit_imputer(config.fill, parts["train"], IMPUTER_FIT_IMAGES, seed=config.seed)
        parts = {name: dataclasses.replace(part, x=impute_part(imputer, part)) for name, part in parts.items()}
    return Problem(parts["train"], parts["val"], parts["test"], splits.train.images.shape[1:], splits.n_classes)

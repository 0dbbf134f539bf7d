"""Baseline imputers from scikit-learn, on the same corrupted images as mivae's models.

An imputer is fitted on (the first `fit_images` of) the corrupted training images, NaN where
missing, and fills the missing pixels of any split; observed pixels are kept exactly. The
completed images then go to the same classifiers as everywhere else.

SimpleImputer is instant. IterativeImputer regresses each pixel on its 50 nearest pixels, in 3 rounds:
all 783 other pixels as regressors would not finish in useful time. KNNImputer's transform compares
every image with every fitted one, a cost that grows with their product, so imputing the 50,000
training images with it is left out. What each costs is in BENCHMARKS.md ("Measurements behind the
defaults").
"""

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (makes IterativeImputer importable)
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

from mivae.errors import MivaeError

IMPUTERS = ("mean", "knn", "iterative")


def make_imputer(name, seed=0):
    """Returns an unfitted scikit-learn imputer: `mean`, `knn` (5 neighbours) or `iterative` (3 rounds, each
    feature regressed on its 50 nearest features)."""
    if name == "mean":
        return SimpleImputer(strategy="mean", keep_empty_features=True)
    if name == "knn":
        return KNNImputer(n_neighbors=5, keep_empty_features=True)
    if name == "iterative":
        return IterativeImputer(
            max_iter=3, n_nearest_features=50, random_state=seed, keep_empty_features=True, skip_complete=True
        )
    raise MivaeError(f"unknown baseline imputer {name!r}; known imputers are {', '.join(IMPUTERS)}.")


def _rows(part):
    """The corrupted images of `part` as a (N, pixels) float64 array with NaN where missing."""
    values = torch.where(part.mask, torch.nan, part.clean)
    return values.flatten(1).double().numpy()


def fit_imputer(name, part, fit_images=None, seed=0):
    """Returns the imputer `name` fitted on the first `fit_images` corrupted images of `part` (all by default)."""
    rows = _rows(part)[:fit_images]
    with warnings.catch_warnings():  # three rounds are a chosen budget, not a failure to converge
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make_imputer(name, seed).fit(rows)


def impute_part(imputer, part):
    """Returns the images of `part` (N, H, W) float32 completed by a fitted imputer; observed pixels kept exactly."""
    filled = imputer.transform(_rows(part)).reshape(part.clean.shape)
    completed = np.where(part.mask.numpy(), np.clip(filled, 0.0, 1.0), part.clean.numpy())
    return torch.from_numpy(completed.astype(np.float32))

"""Corruption (thesis §3.2): which pixels go missing, kept as a boolean mask beside the values.

Two methods, for images of any size (N, H, W):
- Random Pixels (missing at random): D draws with replacement among the p = H*W pixels;
- Vertical Lines (missing not at random): D draws with replacement among the p = W columns,
  each drawn column missing from top to bottom.
D = round(-p ln(1 - cl)) makes the expected missing fraction 1 - (1 - 1/p)^D close to the
corruption level cl. With `exact=True`, exactly round(cl * p) distinct pixels or columns
go missing instead.

`corrupt` returns the values with every missing entry set to NaN, and the mask
(True = missing); a model never sees a hidden value by accident. What a model sees in
place of a missing value is a separate policy, applied by `fill`: `white` (1.0, the
thesis' choice), `zero`, or `mean` (the per-pixel mean of the observed training values).

The masks are deterministic per (seed, split, method, level), and the mask of image i
depends on nothing else (not on how many images are corrupted with it), so every model is
evaluated on identical corrupted images: the paired tests of §3.6 rely on it.
"""

import math
import zlib
from dataclasses import dataclass

import numpy as np

from mivae.errors import MivaeError, check_whole

METHODS = ("random-pixels", "vertical-lines")
FILL_POLICIES = ("white", "zero", "mean")
_CHUNK = 4096  # images per random stream; fixed, so that image i's mask never depends on N


def check_level(level):
    """Returns `level` as a float after checking it is a corruption level in [0, 1)."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise MivaeError(f"corruption level must be a number in [0, 1); got {level!r}.") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise MivaeError(f"corruption level must be in [0, 1); got {level!r}.")
    return value


def check_method(method):
    """Returns `method` after checking it names a corruption method."""
    if method not in METHODS:
        raise MivaeError(f"unknown corruption method {method!r}; expected one of {', '.join(METHODS)}.")
    return method


def number_of_draws(level, p):
    """Returns D = round(-p ln(1 - cl)), the draws that leave a fraction cl missing on average (§3.2)."""
    return round(-p * math.log1p(-check_level(level)))


def _units(method, shape):
    """Returns p, the number of units one draw picks among: pixels or columns."""
    height, width = shape
    return height * width if method == "random-pixels" else width


def expected_missing_fraction(method, level, shape, exact=False):
    """Returns the expected fraction of missing pixels for images of `shape` (H, W)."""
    p = _units(check_method(method), shape)
    if exact:
        return round(check_level(level) * p) / p
    return 1.0 - (1.0 - 1.0 / p) ** number_of_draws(level, p)


def draw_mask(n, shape, method, level, rng, exact=False):
    """Returns a boolean mask (n, H, W), True where a pixel is missing, drawn with `rng`."""
    height, width = shape
    p = _units(check_method(method), shape)
    level = check_level(level)
    units = np.zeros((n, p), dtype=bool)  # (n, p): a pixel or a column per unit
    if exact:
        k = round(level * p)
        if k > 0:
            keys = rng.random((n, p))
            chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]  # k distinct units per image
            np.put_along_axis(units, chosen, True, axis=1)
    else:
        draws = number_of_draws(level, p)
        if draws > 0:
            chosen = rng.integers(0, p, size=(n, draws))  # with replacement, as §3.2
            np.put_along_axis(units, chosen, True, axis=1)
    if method == "random-pixels":
        return units.reshape(n, height, width)
    return np.broadcast_to(units[:, None, :], (n, height, width)).copy()  # whole columns


def _stream_key(seed, split, method, level):
    # crc32 rather than hash(): Python salts string hashes per process.
    return [int(seed), zlib.crc32(split.encode()), zlib.crc32(method.encode()), round(level * 1_000_000)]


def corruption_mask(n, shape, method, level, *, seed, split, exact=False):
    """Returns the mask (n, H, W) of the first n images of `split` under (seed, method, level).

    Images are drawn in fixed chunks, each from its own stream keyed by (seed, split,
    method, level, chunk), so image i's mask is the same whatever n is.
    """
    method, level = check_method(method), check_level(level)
    check_whole("seed", seed)
    key = _stream_key(seed, split, method, level)
    chunks = []
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence([*key, chunk]))
        chunks.append(draw_mask(min(_CHUNK, n - start), shape, method, level, rng, exact))
    return np.concatenate(chunks) if chunks else np.zeros((0, *shape), dtype=bool)


@dataclass(frozen=True)
class Corrupted:
    """Corrupted images: values with NaN where missing, and the mask that says where."""

    values: np.ndarray  # (N, H, W) float32, NaN where mask is True
    mask: np.ndarray  # (N, H, W) bool, True = missing
    method: str
    level: float

    def __len__(self):
        return len(self.mask)

    @property
    def missing_fraction(self):
        """The realised fraction of missing pixels over all images."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def corrupt(images, method, level, *, seed, split, exact=False):
    """Returns `images` (N, H, W) corrupted by `method` at `level`, deterministic per (seed, split, method, level)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise MivaeError(f"images must have shape (N, height, width); got shape {images.shape}.")
    mask = corruption_mask(len(images), images.shape[1:], method, level, seed=seed, split=split, exact=exact)
    return Corrupted(np.where(mask, np.float32(np.nan), images), mask, method, float(level))


def pixel_means(corrupted):
    """Returns the per-pixel mean (H, W) of the observed values; pixels never observed get the overall mean."""
    observed = ~corrupted.mask
    counts = observed.sum(axis=0)
    sums = np.where(observed, corrupted.values, 0.0).sum(axis=0, dtype=np.float64)
    overall = sums.sum() / max(counts.sum(), 1)
    means = np.divide(sums, counts, out=np.full(counts.shape, overall), where=counts > 0)
    return means.astype(np.float32)


def fill(corrupted, policy="white", means=None):
    """Returns the values (N, H, W) with every missing pixel replaced as `policy` says.

    `white` puts 1.0 (the thesis' choice), `zero` puts 0.0, `mean` puts the per-pixel
    training mean `means` (H, W), for example `pixel_means(corrupted_train)`.
    """
    if policy == "white":
        value = np.float32(1.0)
    elif policy == "zero":
        value = np.float32(0.0)
    elif policy == "mean":
        if means is None:
            raise MivaeError(
                "the 'mean' fill policy needs per-pixel training means; pass means=pixel_means(corrupted_train)."
            )
        value = np.asarray(means, dtype=np.float32)
        if value.shape != corrupted.values.shape[1:]:
            raise MivaeError(f"per-pixel means have shape {value.shape}; the images are {corrupted.values.shape[1:]}.")
    else:
        raise MivaeError(f"unknown fill policy {policy!r}; expected one of {', '.join(FILL_POLICIES)}.")
    return np.where(corrupted.mask, value, corrupted.values)

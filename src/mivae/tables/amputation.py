"""Amputation: missing values simulated on a complete table, so imputers are scored on known truths.

Three mechanisms, each returning a boolean mask (n, d), True = missing:
- `mcar`: every entry missing independently with probability `rate`;
- `mar`: a logistic model on a few always-observed columns (Muzellec et al. 2020, "Missing data
  imputation using optimal transport", the `MAR_mask` of their code);
- `mnar`: self-masking, a column's own large values go missing more often (Ipsen, Mattei and
  Frellsen 2021, not-MIWAE, self-masking logistic mechanism).
Intercepts are solved by bisection on the data itself, so the realised rate is `rate` up to
Bernoulli noise rather than only in expectation over some assumed distribution.
"""

import numbers

import numpy as np

from mivae.errors import InputError

MECHANISMS = ("mcar", "mar", "mnar")
MAX_COLUMN_PROBABILITY = 0.95  # mar: above this a column is almost never observed and says little
MNAR_SLOPE = 2.0  # mnar: logit slope per column standard deviation (positive: large values go missing)
_BISECTION_STEPS = 60  # halvings of a bracket ~150 wide: far below float resolution of a probability


def _check_fraction(name, value, low_open):
    """Returns `value` as a float after checking it is a real number in [0, 1), or (0, 1) if `low_open`."""
    interval = "(0, 1)" if low_open else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number in {interval}; got {value!r}.")
    value = float(value)
    if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):  # also refuses NaN
        raise InputError(f"{name} must be in {interval}; got {value!r}.")
    return value


def _check_table(X):
    """Returns X as a float array after checking it is a non-empty, 2-D, numeric, finite table."""
    X = np.asarray(X)
    if X.ndim != 2 or X.size == 0:
        raise InputError(f"X must be a non-empty 2-D array (n, d); got shape {X.shape}.")
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"X must be numeric; got dtype {X.dtype}.")
    if not np.isfinite(X).all():
        raise InputError("X must be complete and finite (amputation starts from complete data); got NaN or inf.")
    return X.astype(float)


def _standardise(X):
    """Returns X (n, d) centred and divided by its column std, a constant column's std taken as 1."""
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def sigmoid(t):
    """Returns the logistic function 1 / (1 + exp(-t)), written with tanh so no input overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def fit_intercepts(logits, target):
    """Returns b (k,) such that mean_i sigmoid(logits[i, j] + b_j) = target for every column j.

    As `fit_intercepts` in Muzellec et al.'s code, but by bisection instead of a root finder: the mean is increasing
    in b_j, so bisection on a bracket that puts every probability near 0 at one end and near 1 at the other
    converges; all columns are solved at once.
    """
    low, high = -60.0 - logits.max(axis=0), 60.0 - logits.min(axis=0)  # (k,) each
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        too_high = sigmoid(logits + mid).mean(axis=0) > target
        low, high = np.where(too_high, low, mid), np.where(too_high, mid, high)
    return 0.5 * (low + high)


def _mar_probabilities(Z, rate, observed_fraction, rng):
    """Returns the (n, d) missingness probabilities of Muzellec et al.'s logistic MAR mechanism."""
    n, d = Z.shape
    n_observed = max(1, round(observed_fraction * d))
    n_amputed = d - n_observed
    largest = MAX_COLUMN_PROBABILITY * n_amputed / d
    if n_amputed == 0 or rate * d / n_amputed > MAX_COLUMN_PROBABILITY + 1e-12:  # so the largest rate itself passes
        raise InputError(
            f"rate {rate} is infeasible for mechanism 'mar' with {n_observed} of {d} columns always observed: "
            f"the largest feasible rate is {largest:.4g} (at most {MAX_COLUMN_PROBABILITY} per amputed column)."
        )
    observed = rng.choice(d, size=n_observed, replace=False)
    amputed = np.setdiff1d(np.arange(d), observed)
    logits = Z[:, observed] @ rng.standard_normal((n_observed, n_amputed))  # (n, n_amputed)
    std = logits.std(axis=0)
    logits /= np.where(std > 0, std, 1.0)  # unit-std logits; all-constant observed columns leave zeros
    probabilities = np.zeros((n, d))
    probabilities[:, amputed] = sigmoid(logits + fit_intercepts(logits, rate * d / n_amputed))
    return probabilities


def ampute(X, rate, mechanism="mcar", seed=0, observed_fraction=0.1):
    """Returns a boolean mask (n, d), True = missing, for the complete float array X (n, d).

    rate: the overall fraction of entries to make missing, in [0, 1).
    mechanism: one of MECHANISMS (see the module docstring).
    seed: seeds numpy.random.default_rng; the same seed gives the same mask.
    observed_fraction: for `mar`, the fraction of columns that are always observed (at least one).
    """
    X = _check_table(X)
    rate = _check_fraction("rate", rate, low_open=False)
    if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
        raise InputError(f"mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}.")
    observed_fraction = _check_fraction("observed_fraction", observed_fraction, low_open=True)
    if rate == 0.0:
        return np.zeros(X.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    if mechanism == "mcar":
        probabilities = np.full(X.shape, rate)
    elif mechanism == "mar":
        probabilities = _mar_probabilities(_standardise(X), rate, observed_fraction, rng)
    else:
        logits = MNAR_SLOPE * _standardise(X)  # (n, d)
        probabilities = sigmoid(logits + fit_intercepts(logits, rate))
    return rng.random(X.shape) < probabilities


def rmse_missing(X_true, X_imputed, mask, scale=None):
    """Returns the root mean squared error over the missing entries, each column divided by scale[j].

    scale defaults to the column std of X_true (0 taken as 1), so columns in different
    units weigh alike; observed entries of X_imputed are ignored.
    """
    X_true, X_imputed, mask = np.asarray(X_true, dtype=float), np.asarray(X_imputed, dtype=float), np.asarray(mask)
    if X_true.ndim != 2 or X_imputed.shape != X_true.shape or mask.shape != X_true.shape:
        raise InputError(
            "X_true, X_imputed and mask must share one 2-D shape; "
            f"got {X_true.shape}, {X_imputed.shape} and {mask.shape}."
        )
    if mask.dtype != bool or not mask.any():
        raise InputError(
            f"mask must be a boolean array with at least one True (missing) entry; got dtype {mask.dtype} "
            f"with {int(np.count_nonzero(mask))} nonzero entries."
        )
    if scale is None:
        std = X_true.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
    scale = np.asarray(scale, dtype=float)
    if scale.shape != (X_true.shape[1],) or not (np.isfinite(scale) & (scale > 0)).all():
        raise InputError(f"scale must hold {X_true.shape[1]} positive finite numbers; got {scale!r}.")
    errors = ((X_imputed - X_true) / scale)[mask]  # (number of missing entries,)
    return float(np.sqrt(np.mean(errors**2)))

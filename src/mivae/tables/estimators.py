"""scikit-learn estimators for any table with missing values: VAEImputer, MIWAEImputer, NotMIWAEImputer,
MultipleImputationClassifier.

They follow the contract of `sklearn.impute`: `__init__` only stores parameters, `fit` validates its
input and returns self, learned state ends in `_`, `transform` checks that the estimator was fitted
and that the feature count matches, and never refits. They work inside Pipeline, GridSearchCV and
cross_val_score. Input is a DataFrame (column types from its dtypes) or a 2-D array (continuous
unless `categorical` names columns), NaN or None where missing; output has the same form, columns
and order, with every observed entry kept exactly.

The imputers are mask-aware VAEs over the encoded rows (mivae.tables.schema, mivae.models.tabular) that
learn from the observed entries alone; no complete row is needed.

- `VAEImputer` trains on the masked ELBO and imputes as the thesis does: single imputation decodes
  z = mu, multiple imputation decodes latent samples z ~ q(z | x_obs).
- `MIWAEImputer` trains on the importance-weighted bound with K samples (Mattei and Frellsen 2019)
  and imputes by self-normalised importance sampling (single) and sampling-importance-resampling
  (multiple).
- `NotMIWAEImputer` is MIWAE with a model of why values go missing (Ipsen, Mattei and Frellsen 2021), for
  values missing not at random.

A fitted imputer is saved as JSON and safetensors (`save`, `load_imputer`; mivae.tables.saved), and its
`transform` takes a Dask DataFrame too, partition by partition.

Multiple imputations draw the missing entries from p(x | z), observation noise and all, so M
completed tables carry the uncertainty of the missing values, as proper multiple imputation needs.
"""

import dataclasses
import functools
import math
import numbers
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from mivae.config import TrainConfig
from mivae.errors import InputError, MivaeError, check_choice, check_number, check_whole
from mivae.hardware import (
    PRECISIONS,
    bf16_supported,
    cores,
    resolve_device,
    resolve_precision,
    torch_threads,
)
from mivae.models.distributions import (
    factor_observed_log_density,
    factor_posterior,
    importance_weights,
    iwae_bound,
    reparameterize,
)
from mivae.models.tabular import ACTIVATIONS, DECODERS, LIKELIHOODS, MIN_SCALE, MISSINGNESS, TabularVAE
from mivae.readback import on_meta
from mivae.tables import saved
from mivae.tables.schema import CONTINUOUS, Schema, infer_kinds
from mivae.training import History, TrainingDiverged, adam, fit, history_from_json

BATCH_ROWS = 1024  # rows per forward pass when imputing: bounds memory at K proposals per row
CANDIDATES = 64  # NotMIWAEImputer.sample: draws of p(x | z) per missing value, resampled by its chance of going missing
# The defaults that scale with the table (benchmarks/scale.py, BENCHMARKS.md "Big tables"):
# - max_steps "auto" is a budget of MAX_STEPS gradient steps, or of MAX_ROWS rows' worth of steps where that is fewer
#   (`auto_steps`), so that the time a fit takes stays bounded as the batch grows. Training ends there if early
#   stopping or max_epochs has not ended it before (up to 2,560 training rows, 500 epochs come first); where the
#   budget ends it, the learning rate falls linearly to zero over the budget;
# - batch_size "auto" grows with the rows (`auto_batch`), and lr "auto" with the batch (`auto_lr`);
# - a table of at least BIG_TABLE rows is big: threads "auto" uses every core for it, and precision "auto" bf16 where
#   the hardware has it natively (a small table's steps gain nothing from either, and waiting on a busy core made a
#   small step 230 times slower);
# - validation holds out at most VALIDATION_ROWS rows.
MAX_STEPS = 20_000
MAX_ROWS = 3_000_000
MAX_BATCH = 256
BASE_LR = 1e-3
BIG_TABLE = 50_000
VALIDATION_ROWS = 10_000
# A fitted model has collapsed where its single imputations hardly vary from row to row: in every continuous column
# their standard deviation is under COLLAPSED of the observed values' (they explain under 1 % of its variance), as the
# column's mean would. Measured on up to VALIDATION_ROWS of the training rows.
COLLAPSED = 0.1
# The parameters added since imputers were first saved, as files saved before each had them: their defaults.
OLD_PARAMS = {
    "activation": "relu",
    "standardize": True,
    "n_init": 1,
    "decoder": "mlp",
    "min_scale": MIN_SCALE,
    "n_models": 1,
}


def auto_batch(rows):
    """The batch size "auto" gives `rows` training rows: rows / 256 rounded to a power of two, from 64 (up to 23,170
    rows, as before the step budget) to MAX_BATCH (from 46,341 rows on)."""
    return int(min(MAX_BATCH, max(64, 2 ** round(math.log2(max(rows, 1) / 256)))))


def auto_steps(batch_size):
    """The budget of gradient steps "auto" gives batches of `batch_size` rows: MAX_STEPS, or MAX_ROWS / batch_size
    steps where that is fewer (batches of more than 150 rows)."""
    return min(MAX_STEPS, math.ceil(MAX_ROWS / batch_size))


def auto_lr(batch_size):
    """The learning rate "auto" gives batches of `batch_size` rows: BASE_LR at 64 rows, growing with the square root
    of the batch (Adam's square-root scaling rule, Malladi et al. 2022), so larger batches take larger steps."""
    return BASE_LR * math.sqrt(batch_size / 64)


def _validate_table(estimator, X, reset, categorical):
    """Returns X checked by scikit-learn (feature count and names against fit) in the form the schema reads.

    A DataFrame is returned as it is, its dtypes intact; an array is converted to float64 when every
    column is continuous (so a non-number is an error there) and kept as objects otherwise.
    """
    if hasattr(X, "dtypes") and hasattr(X, "columns"):
        # names and count only: converting the whole frame would lose its dtypes (categories, nullable integers)
        validate_data(estimator, X, reset=reset, skip_check_array=True)
        if len(X) == 0 or X.shape[1] == 0:
            raise InputError(f"X needs at least one row and one column; got a table of shape {X.shape}.")
        return X
    return validate_data(
        estimator, X, reset=reset, dtype=None if categorical else "numeric", ensure_all_finite="allow-nan"
    )


def _threaded(method):
    """Runs an imputer's method with torch on the imputer's `threads` CPU threads ("auto":
    `_TabularImputer.threads`)."""

    @functools.wraps(method)
    def run(self, X, *args, **kwargs):
        threads = self.threads
        if threads == "auto":
            threads = cores() if _rows(X) >= BIG_TABLE else 1
        else:
            check_whole("threads", threads, 1, also=("auto",), error=InputError)
        with torch_threads(threads):
            result = method(self, X, *args, **kwargs)
        if method.__name__ == "fit":
            self.threads_ = threads
        return result

    return run


def _is_dask(X):
    """Whether X is a Dask DataFrame (told without importing dask, which mivae does not need otherwise)."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "map_partitions")


def _rows(X):
    """The row count of a table given as an array, a DataFrame, a list of rows or anything with __array__; 0 for
    what is none of them (the validation that follows names what is wrong)."""
    try:
        return X.shape[0] if hasattr(X, "shape") else len(X) if hasattr(X, "__len__") else np.asarray(X).shape[0]
    except (IndexError, TypeError, ValueError):
        return 0


class _TabularImputer(TransformerMixin, BaseEstimator):
    """What the imputers share: validation, the schema, training, saving, and encoded imputations made tables."""

    model_: TabularVAE  # fitted attributes fit sets from more than one place (their types, for the type check)
    steps_: int

    @property
    def training_samples(self):
        """K of the training bound: 1, the masked ELBO; MIWAEImputer sets its own."""
        return 1

    @property
    def _missingness(self):
        """The model of the pattern of gaps (models.tabular.MISSINGNESS), None where it is taken as random."""
        return None

    def __init__(
        self,
        categorical=None,
        likelihood="gaussian",
        hidden=(128, 128),
        latent=None,
        lr="auto",
        max_epochs=500,
        patience=50,
        batch_size="auto",
        validation_fraction=0.1,
        precision="auto",
        threads="auto",
        random_state=None,
        device="cpu",
        max_steps="auto",
        round_integers=True,
        fit_rows=None,
        activation="relu",
        standardize=True,
        n_init=1,
        decoder="mlp",
        min_scale=MIN_SCALE,
        n_models=1,
    ):
        self.categorical = categorical
        self.likelihood = likelihood
        self.hidden = hidden
        self.latent = latent
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.threads = threads
        self.random_state = random_state
        self.device = device
        self.max_steps = max_steps
        self.round_integers = round_integers
        self.fit_rows = fit_rows
        self.activation = activation
        self.standardize = standardize
        self.n_init = n_init
        self.decoder = decoder
        self.min_scale = min_scale
        self.n_models = n_models

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _check_params(self):
        check_choice("likelihood", self.likelihood, LIKELIHOODS, error=InputError)
        hidden = self.hidden
        if (
            not isinstance(hidden, (tuple, list))
            or not hidden
            or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and int(h) >= 1 for h in hidden)
        ):
            raise InputError(f"hidden must be a non-empty sequence of layer widths of at least 1; got {hidden!r}.")
        check_whole("latent", self.latent, 1, also=(None,), error=InputError)
        check_whole("max_epochs", self.max_epochs, 1, error=InputError)
        check_whole("patience", self.patience, 1, error=InputError)
        check_whole("batch_size", self.batch_size, 1, also=("auto",), error=InputError)
        check_whole("max_steps", self.max_steps, 1, also=("auto", None), error=InputError)
        check_whole("fit_rows", self.fit_rows, 1, also=(None,), error=InputError)
        check_number("lr", self.lr, 0, math.inf, high_open=True, also=("auto",), error=InputError)
        fraction = self.validation_fraction
        check_number("validation_fraction", fraction, 0, 1, low_open=False, high_open=True, error=InputError)
        check_choice("precision", self.precision, PRECISIONS, error=InputError)
        check_choice("activation", self.activation, tuple(ACTIVATIONS), error=InputError)
        check_choice("decoder", self.decoder, DECODERS, error=InputError)
        check_number("min_scale", self.min_scale, 0, math.inf, high_open=True, error=InputError)
        if not isinstance(self.standardize, bool):
            raise InputError(f"standardize must be True or False; got {self.standardize!r}.")
        check_whole("n_init", self.n_init, 1, error=InputError)
        if self.n_init > 1 and self.validation_fraction == 0:
            raise InputError(
                f"n_init={self.n_init} keeps the fit with the best validation bound, so it needs held-out rows: "
                "give validation_fraction above 0, or n_init=1."
            )
        check_whole("n_models", self.n_models, 1, error=InputError)
        try:
            return resolve_device(self.device)
        except MivaeError as e:
            raise InputError(str(e)) from None

    @_threaded
    def fit(self, X, y=None):
        """Fits the imputer on table X (n, d) with NaN where missing; y is ignored. Returns self."""
        device = self._check_params()
        X = _validate_table(self, X, reset=True, categorical=self.categorical)
        if self.fit_rows is not None and len(X) > self.fit_rows:
            # a sample of the rows, drawn from random_state; the whole table's feature names and count are kept
            rows = np.sort(check_random_state(self.random_state).choice(len(X), self.fit_rows, replace=False))
            X = X.iloc[rows] if hasattr(X, "iloc") else X[rows]
        self.fit_rows_ = len(X)
        try:
            kinds = infer_kinds(X, self.categorical)
        except ValueError as e:
            raise InputError(str(e)) from None
        if not isinstance(self.round_integers, bool):
            raise InputError(f"round_integers must be True or False; got {self.round_integers!r}.")
        try:
            self.schema_ = Schema.fit(X, kinds, self.round_integers, self.standardize)
        except ValueError as e:
            raise InputError(str(e)) from None
        empty = [c.name for c in self.schema_.columns if c.empty]
        if len(empty) == len(self.schema_.columns):
            raise InputError("every column is missing in every row, so there is nothing to learn from.")
        if empty:
            warnings.warn(
                f"column(s) {', '.join(repr(n) for n in empty)} have no observed value; they take no part "
                "in the model and come back missing.",
                UserWarning,
                stacklevel=3,  # the caller of fit, past the wrapper that sets torch's threads
            )
        if self.n_init > 1 and int(len(X) * self.validation_fraction) == 0:
            raise InputError(
                f"n_init={self.n_init} keeps the fit with the best validation bound, but "
                f"validation_fraction={self.validation_fraction} of {len(X)} rows holds out none: "
                "give a larger validation_fraction, or n_init=1."
            )
        values, observed = (torch.from_numpy(a).to(device) for a in self.schema_.encode(X))
        big = len(X) >= BIG_TABLE and bf16_supported(device)
        self.precision_ = ("bf16" if big else "fp32") if self.precision == "auto" else self.precision
        columns = len(self.schema_.modelled)
        self.latent_ = self.latent or max(1, min(columns - 1, 16))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        # Each member of an ensemble holds out rows of its own, so that together they learn from every row; the
        # first is the fit that n_models=1 makes.
        members = []  # a loop, not a comprehension: its warnings' stack levels are the same in every Python
        for k in range(self.n_models):
            members.append(self._fit_member(values, observed, (seed + 104729 * k) % (2**31 - 1)))
        self.models_ = [member[0] for member in members]
        self.model_, self.history_, self.seed_, _, _ = members[0]
        self.steps_ = sum(member[3] for member in members)
        history = self.history_
        cut_short = next((member[1] for member in members if member[4]), None)
        self.imputation_spread_ = self._imputation_spread(values, observed)
        if self.imputation_spread_ is not None and self.imputation_spread_ < COLLAPSED:
            warnings.warn(
                f"the model imputes nearly the same value in every row, as the columns' means would (its imputations' "
                f"spread is at most {self.imputation_spread_:.3f} of each column's): either the columns barely "
                f"depend on each other, or training stopped on the plateau where it learns their means alone (best "
                f"epoch {history.best_epoch} of {len(history.train_loss)}), which "
                + ("more epochs" if cut_short is not None else "a longer patience (say patience=200)")
                + " can let it leave.",
                ConvergenceWarning,
                stacklevel=3,  # the caller of fit, past the wrapper that sets torch's threads
            )
        if cut_short is not None:
            warnings.warn(
                f"training ended at its epoch limit (max_epochs={self.max_epochs}) with the validation bound still "
                f"improving (best at epoch {cut_short.best_epoch}, under patience={self.patience}): the model may not "
                "have converged; give it more epochs"
                + (" (the linear decoder needs thousands)" if self.decoder == "linear" else "")
                + ".",
                ConvergenceWarning,
                stacklevel=3,  # the caller of fit, past the wrapper that sets torch's threads
            )
        return self

    def _fit_member(self, values, observed, seed):
        """Trains one network on the encoded rows from `seed` and returns (network, history, the seed of its start,
        the steps it took, whether max_epochs ended it still improving): of n_init starts, the one with the best
        validation bound."""
        starts: list[tuple[float, TabularVAE, History, int, int, bool]] = []
        for start in range(self.n_init):
            # Each start has its own initial weights and training noise; all hold out the same rows, scored with
            # the same noise, so that their validation bounds compare, and the best is kept (as GaussianMixture's
            # n_init keeps the best of its starts).
            start_seed = (seed + 7919 * start) % (2**31 - 1)
            torch.manual_seed(start_seed)  # the initial weights
            model = self._network().to(values.device)
            self.model_ = model
            history = self._train(values, observed, start_seed, split_seed=seed)
            bound = history.val_score[history.best_epoch - 1] if history.val_score else -math.inf
            starts.append((bound, model, history, start_seed, self.steps_, self._cut_short))
            starts = [max(starts, key=lambda s: s[0])]  # the best so far: one network kept besides the one training
        return starts[0][1:]

    def _imputation_spread(self, values, observed):
        """Returns how much the fitted model's single imputations vary across the encoded rows (up to
        VALIDATION_ROWS of them, evenly spaced): over the continuous columns with two or more entries missing and
        observed, the largest ratio of the standard deviation of its imputations to that of the observed values.
        None where no column has them."""
        rows = torch.linspace(0, len(values) - 1, min(len(values), VALIDATION_ROWS)).long().to(values.device)
        values, observed = values[rows], observed[rows]
        single = self._in_batches(self._imputed, values, observed)
        seen = self._observed_slots(observed).bool()
        spreads, slot = [], 0
        for kind, width in self.schema_.layout():
            if kind == CONTINUOUS and 2 <= seen[:, slot].sum() <= len(values) - 2:
                given = values[seen[:, slot], slot].double().std()
                if given > 0:
                    spreads.append(float(single[~seen[:, slot], slot].double().std() / given))
            slot += width
        return max(spreads) if spreads else None

    def _train(self, values, observed, seed, split_seed):
        """Trains model_ on the encoded rows from `seed` (on the importance-weighted bound with training_samples, or
        the exact log-likelihood where `_exact_likelihood` gives one), holding out validation_fraction of them (drawn
        from `split_seed`, as is the noise that scores them) for early stopping."""
        n = len(values)
        n_val = min(int(n * self.validation_fraction), VALIDATION_ROWS)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).to(values.device)
        val, train = order[:n_val], order[n_val:]
        rows = torch.cat([values, observed], dim=1)  # (n, W + C): one tensor, sliced into batches by fit
        width = values.shape[1]
        samples = self.training_samples
        latent = self.latent_
        exact = self._exact_likelihood()

        def loss(model, batch, _):
            if exact:
                return -exact(model, batch[:, :width], batch[:, width:]).mean()
            eps = torch.randn(samples, len(batch), latent, device=batch.device)
            log_w, _ = model.log_weights(batch[:, :width], batch[:, width:], eps)
            return -iwae_bound(log_w).mean()

        score = None
        if n_val >= 1 and exact:

            @torch.no_grad()
            def score(model):
                return exact(model, values[val], observed[val]).mean().item()

        elif n_val >= 1:
            generator = torch.Generator().manual_seed(split_seed + 1)
            val_eps = torch.randn((samples, n_val, latent), generator=generator).to(values.device)
            # a missingness model's draws of the missing values, fixed too (None: the model has none to draw)
            val_noise = None
            if self._missingness is not None:
                val_noise = torch.randn((samples, n_val, self.model_.n_continuous), generator=generator)
                val_noise = val_noise.to(values.device)

            @torch.no_grad()
            def score(model):  # the same noise every epoch: the bound moves only with the weights
                model.eval()
                log_w, _ = model.log_weights(values[val], observed[val], val_eps, val_noise)
                return iwae_bound(log_w).mean().item()

        self.batch_size_ = min(auto_batch(len(train)) if self.batch_size == "auto" else self.batch_size, len(train))
        self.lr_ = auto_lr(self.batch_size_) if self.lr == "auto" else self.lr
        steps_per_epoch = math.ceil(len(train) / self.batch_size_)
        budget = auto_steps(self.batch_size_) if self.max_steps == "auto" else self.max_steps
        epochs, schedule = self.max_epochs, None
        if budget is not None and budget < self.max_epochs * steps_per_epoch:
            # The budget ends training at a step known in advance (mid-epoch if need be): the rate falls linearly
            # towards zero at it.
            epochs = math.ceil(budget / steps_per_epoch)
            schedule = lambda step: 1 - step / budget  # noqa: E731
        else:
            budget = None
        config = TrainConfig(
            epochs=epochs,
            patience=self.patience,
            batch_size=self.batch_size_,
            seed=seed,
            precision=self.precision_,
            device=str(values.device),
        )
        rows = rows[train]
        try:
            history = fit(
                self.model_,
                adam(self.model_, self.lr_),
                loss,
                rows,
                rows,
                config,
                score=score,
                lr_schedule=schedule,
                max_steps=budget,
            )
        except TrainingDiverged as e:
            message = str(e)
            if self.min_scale < 0.1:
                # The usual cause on a table: a column repeating a value exactly, whose density the floor bounds.
                message = (
                    f"{message.rstrip('.')}, and where columns repeat values exactly (counts, pixel intensities) so "
                    f"does a larger min_scale (now {self.min_scale:g}; say 1)."
                )
            history = e.history
            if e.best_state is None or history is None:  # diverged before any epoch was scored: nothing sane to keep
                raise TrainingDiverged(message) from None
            # Early stopping had a sane best epoch: it is kept, as if training had stopped there, and said so.
            self.model_.load_state_dict(e.best_state)
            self.model_.eval()
            warnings.warn(
                f"{message[:-1]}; the weights of epoch {history.best_epoch}, its best before that, are kept.",
                UserWarning,
                stacklevel=5,  # the caller of fit, past _train, _fit_member, fit and the wrapper that sets threads
            )
            self.steps_ = len(history.train_loss) * steps_per_epoch
            self._cut_short = False
            return history
        self.steps_ = min(len(history.train_loss) * steps_per_epoch, budget or math.inf)
        # Early stopping never ended it, nor the budget (whose rate falls to zero by design): max_epochs did.
        self._cut_short = score is not None and not history.stopped_early and budget is None
        return history

    def _encode(self, X):
        check_is_fitted(self, "model_")
        X = _validate_table(self, X, reset=False, categorical=self.categorical)
        try:
            values, observed = self.schema_.encode(X)
        except ValueError as e:
            raise InputError(str(e)) from None
        device = self._device()
        return X, torch.from_numpy(values).to(device), torch.from_numpy(observed).to(device)

    def _device(self):
        """The device the fitted model is on: where its inputs go and its imputations are computed."""
        return next(self.model_.parameters()).device

    def _observed_slots(self, observed):
        return observed[:, self.model_.column_of_slot]

    @torch.no_grad()
    def _single(self, model, values, observed):
        """Returns the encoded single imputation (B, W) of encoded rows by the network `model`; observed slots
        kept."""
        raise NotImplementedError

    @torch.no_grad()
    def _draw(self, model, values, observed, imputations, generator, shared):
        """Returns M encoded imputations (M, B, W) drawn from the network `model`'s p(x_miss | x_obs); observed slots
        kept.

        With `shared`, the same noise serves every row, so each row's imputations are a fixed function
        of that row alone; otherwise every row draws its own.
        """
        raise NotImplementedError

    def _imputed(self, values, observed):
        """Returns the encoded single imputation (B, W) of encoded rows by every member of the ensemble: the mean of
        theirs (for a categorical column, of its labels' probabilities)."""
        return sum(self._single(model, values, observed) for model in self.models_) / len(self.models_)

    def _drawn_by_members(self, values, observed, imputations, generator, shared):
        """Returns M encoded imputations (M, B, W) of encoded rows, the i-th drawn by member i mod n_models of the
        ensemble: draws from the mixture of the members' p(x_miss | x_obs), each weighing the same."""
        members = self.models_[:imputations]
        parts = [
            self._draw(model, values, observed, len(range(k, imputations, len(members))), generator, shared)
            for k, model in enumerate(members)
        ]
        draws = parts[0].new_empty((imputations, *parts[0].shape[1:]))
        for k, part in enumerate(parts):
            draws[k :: len(members)] = part
        return draws

    def _noise(self, shape, rows, generator, shared, uniform=False):
        """Returns noise (*shape, rows or 1, ...) : standard normal, or uniform in [0, 1)."""
        size = (*shape[:1], 1 if shared else rows, *shape[1:])
        # Drawn on the CPU from its seeded generator, so the imputations are the same on every device.
        noise = torch.rand(size, generator=generator) if uniform else torch.randn(size, generator=generator)
        return noise.to(self._device())

    def _observation_noise(self, imputations, rows, generator, shared):
        model = self.model_
        return (
            self._noise((imputations, model.n_continuous), rows, generator, shared),
            self._noise((imputations, len(model.blocks)), rows, generator, shared, uniform=True),
        )

    def _in_batches(self, fn, values, observed, dim=0):
        """`fn` over the rows in batches of BATCH_ROWS, its matmuls in the fit's precision (the model's outputs,
        the weights and the imputations stay float32)."""
        for model in self.models_:
            model.eval()
        device = values.device
        precision = getattr(self, "precision_", self.precision)  # an imputer fitted before precision_ existed: its own
        low = resolve_precision(precision, device) == torch.bfloat16
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            parts = [
                fn(values[i : i + BATCH_ROWS], observed[i : i + BATCH_ROWS]) for i in range(0, len(values), BATCH_ROWS)
            ]
        return torch.cat(parts, dim=dim).float() if parts else torch.zeros((0, values.shape[1]), device=device)

    def transform(self, X):
        """Returns the single imputation of table X: the same form, columns and order, observed entries kept exactly.

        X may be a Dask DataFrame: the result is then a Dask DataFrame too, imputed partition by partition
        (`map_partitions`) where it is computed, on whichever workers hold the partitions. Each row's imputation
        depends on that row alone, so the result is the same as the whole table's in memory, row for row.

        Imputations beyond their column's observed range by more than twice its width are warned of (a UserWarning
        naming the columns): the model extrapolates far past its data there.
        """
        if _is_dask(X):
            return self._transform_dask(X)
        return self._transform(X)

    def _transform_dask(self, X):
        check_is_fitted(self, "model_")
        meta = X._meta.copy()  # what each partition comes back as: its own dtypes, but integers imputed as floats
        for c in self.schema_.columns:
            if c.integer and not self.schema_.round_integers:
                meta[c.name] = meta[c.name].astype(np.float64)
        return X.map_partitions(self.transform, meta=meta)

    @_threaded
    def _transform(self, X):
        X, values, observed = self._encode(X)
        completed = self._in_batches(self._imputed, values, observed)
        self._warn_far(completed, observed)
        return self.schema_.assemble(self.schema_.decode(completed.cpu().numpy(), X), X)

    def _warn_far(self, completed, observed):
        """Warns where single imputations (encoded rows) lie outside their column's observed range by more than twice
        its width: the model extrapolates far beyond the data it learned from there. (Values missing because they
        are large lie beyond the observed ones, which is why the margin is wide.)"""
        far, slot = [], 0
        for j, column in enumerate(self.schema_.modelled):
            span = 2 * (column.high - column.low)
            if column.kind == CONTINUOUS and span > 0:
                imputed = completed[:, slot][observed[:, j] == 0].double() * column.std + column.mean
                count = int(((imputed < column.low - span) | (imputed > column.high + span)).sum())
                if count:
                    far.append(f"{column.name!r} ({count})")
            slot += column.width
        if far:
            warnings.warn(
                f"imputed values lie outside the observed range by more than twice its width in column(s) "
                f"{', '.join(far)}: the model extrapolates far beyond the data it learned from (a linear decoder can, "
                "on columns far from Gaussian); check its fit before trusting them.",
                UserWarning,
                stacklevel=6,  # transform's caller: past scikit-learn's set_output wrapper, _threaded, _transform
            )

    def sample(self, X, n_imputations=10):
        """Returns a list of `n_imputations` completed copies of table X, each drawn from p(x_miss | x_obs).

        Each copy has X's form, columns and order; observed entries are kept exactly. The draws come
        from random_state, so an int random_state gives the same copies on every call.
        """
        return self._sample(X, n_imputations, int(check_random_state(self.random_state).randint(2**31 - 1)))

    @_threaded
    def _sample(self, X, n_imputations, seed):
        """`sample` with the seed of its draws given (mivae.tables.stream draws each row group with its own)."""
        check_whole("n_imputations", n_imputations, 1, error=InputError)
        X, values, observed = self._encode(X)
        draws = self._drawn(values, observed, n_imputations, seed, shared=False)
        return [self.schema_.assemble(self.schema_.decode(d.numpy(), X), X) for d in draws.cpu()]

    def _drawn(self, values, observed, imputations, seed, shared):
        """Returns `_drawn_by_members` over all rows in batches: one stream of noise through the batches, or with
        `shared` the same noise restarted for every batch, so that a row's draws never depend on its batch."""
        generator = torch.Generator().manual_seed(seed)

        def batch(v, o):
            restarted = torch.Generator().manual_seed(seed) if shared else generator
            return self._drawn_by_members(v, o, imputations, restarted, shared)

        return self._in_batches(batch, values, observed, dim=1)

    def save(self, path):
        """Writes the fitted imputer into the folder `path` (created if need be): imputer.json and model.safetensors,
        no pickle (mivae.tables.saved). `load` reads it back; its transform and sample give what this one's do."""
        check_is_fitted(self, "model_")
        if not (self.random_state is None or isinstance(self.random_state, numbers.Integral)):
            raise InputError(
                "only an imputer whose random_state is a whole number or None can be saved: a RandomState's next "
                "draws cannot be written down."
            )
        params = self.get_params()
        params["hidden"] = list(params["hidden"])
        if params["categorical"] is not None:
            params["categorical"] = [saved.value_to_json(v, "the categorical column") for v in params["categorical"]]
        names = getattr(self, "feature_names_in_", None)
        content = {
            "format": saved.FORMAT,
            "class": type(self).__name__,
            "params": params,
            "architecture": self._architecture(),
            "fitted": {name: getattr(self, name) for name in _FITTED},
            "feature_names": None if names is None else [str(n) for n in names],
            "history": dataclasses.asdict(self.history_),
            "schema": saved.schema_to_json(self.schema_),
        }
        saved.write(path, content, self._weights(self.models_))

    def _exact_likelihood(self):
        """Returns a function (model, values, observed) -> log p(x_obs) per row where training maximises the exact
        log-likelihood instead of a bound, or None: the VAE's masked ELBO is the thesis' objective."""
        return None

    def _network(self):
        """Returns the network this imputer's parameters and fitted schema describe, freshly initialised."""
        return TabularVAE(
            self.schema_.layout(),
            tuple(self.hidden),
            self.latent_,
            self.likelihood,
            self._missingness,
            self.activation,
            self.decoder,
            self.min_scale,
        )

    def _architecture(self):
        return {
            "layout": [list(pair) for pair in self.schema_.layout()],
            "hidden": list(self.hidden),
            "latent": self.latent_,
            "likelihood": self.likelihood,
            "missingness": self._missingness,
            "decoder": self.decoder,
            "min_scale": float(self.min_scale),
        }

    @classmethod
    def load(cls, path, device=None):
        """Returns the imputer that `save` wrote into the folder `path`, on `device` (None: the one it was saved
        with). Every field is checked before anything is built, and a damaged or crafted file is refused in one
        sentence (a ValueError). `VAEImputer.load` refuses another class's file; `load_imputer` takes any."""
        content = saved.read(path)
        where = Path(path) / saved.JSON_NAME
        classes = {c.__name__: c for c in IMPUTERS}
        name = content.get("class")
        if not isinstance(name, str) or name not in classes:
            raise InputError(f"{where} holds {name!r}, not one of mivae's imputers ({', '.join(classes)}).")
        if cls is not _TabularImputer and classes[name] is not cls:
            raise InputError(f"{where} holds a {name}, not a {cls.__name__}: load it with {name}.load or load_imputer.")
        imputer, device = classes[name]._from_params(content.get("params"), where, device)
        imputer._restore(content, where)
        networks = lambda: imputer._weights([imputer._network() for _ in range(imputer.n_models)])  # noqa: E731
        probe = on_meta(networks)  # the shapes the file must hold, computed without allocating them
        state = saved.checked_weights(path, content, probe)
        weights = networks()
        weights.load_state_dict(state)
        weights.to(device).eval()
        imputer.models_ = list(weights) if isinstance(weights, torch.nn.ModuleList) else [weights]
        imputer.model_ = imputer.models_[0]
        return imputer

    @staticmethod
    def _weights(models):
        """The module whose state is what `save` writes: the network itself, or the ensemble's members in a
        ModuleList (their weights named 0.*, 1.*, ...)."""
        return models[0] if len(models) == 1 else torch.nn.ModuleList(models)

    @classmethod
    def _from_params(cls, params, where, device):
        """Returns (an unfitted imputer of this class with the saved `params`, every one checked; its device)."""
        names = set(cls().get_params())
        if isinstance(params, dict):  # files saved before these parameters were offered had their defaults
            params = {**OLD_PARAMS, **params}
        if not isinstance(params, dict) or set(params) != names:
            raise InputError(f"{where} is damaged: its parameters are not those of a {cls.__name__}.")
        params = dict(params)
        if isinstance(params["hidden"], list):
            params["hidden"] = tuple(params["hidden"])
        if isinstance(params["categorical"], list):
            params["categorical"] = [saved.value_from_json(v, where) for v in params["categorical"]]
        if device is not None:
            params["device"] = device
        imputer = cls(**params)
        try:
            return imputer, imputer._check_params()  # every parameter's type and range; the device must exist here
        except InputError as e:
            raise InputError(f"{where} cannot be loaded: {str(e).rstrip('.')}.") from None

    def _restore(self, content, where):
        """Sets the fitted attributes but the network from saved `content`, checking each."""
        fitted = content.get("fitted")
        if isinstance(fitted, dict) and "imputation_spread_" not in fitted:  # saved before fit measured it
            fitted = {**fitted, "imputation_spread_": None}
        if not isinstance(fitted, dict) or set(fitted) != set(_FITTED):
            raise InputError(f"{where} is damaged: it does not list the fitted attributes.")
        for name, kind in _FITTED.items():
            value = fitted[name]
            if kind is str:
                valid = value in ("bf16", "fp32")
            elif name == "imputation_spread_":
                valid = value is None or (type(value) in (int, float) and math.isfinite(value) and value >= 0)
            else:
                number = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
                valid = number and math.isfinite(value) and (value >= 0 if name == "seed_" else value > 0)
            if not valid:
                raise InputError(f"{where} is damaged: {name} is {value!r}.")
            setattr(self, name, float(value) if kind is float and value is not None else value)
        self.schema_ = saved.schema_from_json(content.get("schema"), where, self.round_integers)
        architecture = content.get("architecture")
        if isinstance(architecture, dict):  # files saved before the decoder and floor were parameters had the defaults
            architecture = {"decoder": OLD_PARAMS["decoder"], "min_scale": OLD_PARAMS["min_scale"], **architecture}
        if self.n_features_in_ != len(self.schema_.columns) or architecture != self._architecture():
            raise InputError(f"{where} is damaged: its network, schema and parameters disagree.")
        names = content.get("feature_names")
        if names is not None:
            if (
                not isinstance(names, list)
                or len(names) != self.n_features_in_
                or not all(isinstance(n, str) for n in names)
            ):
                raise InputError(f"{where} is damaged: its feature names are not one string per column.")
            self.feature_names_in_ = np.asarray(names, dtype=object)
        try:
            self.history_ = history_from_json(content.get("history"), where, "history")
        except MivaeError as e:
            raise InputError(str(e)) from None

    @_threaded
    def encoded_imputations(self, X, n_imputations, seed=0, shared=True):
        """Returns (imputations (M, n, W) float32, observed (n, columns)) in the model's encoding: standardised
        continuous values and one-hot labels, for classifiers that work on the encoding. With `shared`,
        each row's imputations depend on that row alone (common random numbers)."""
        X, values, observed = self._encode(X)
        return self._drawn(values, observed, n_imputations, seed, shared).cpu().numpy(), observed.cpu().numpy()


class VAEImputer(_TabularImputer):
    """Imputes a table with a VAE trained on the masked ELBO, as the thesis' VAE (§2.2) on incomplete data.

    Parameters
    ----------
    categorical : list of column names (DataFrame) or indices (array), or None
        Columns to treat as categorical besides those a DataFrame's dtypes make categorical.
    likelihood : "gaussian" or "student-t"
        The decoder's distribution for continuous columns (standardised internally).
    hidden : tuple of int
        Nodes per hidden layer of the encoder; the MLP decoder mirrors them.
    latent : int or None
        Latent dimension L; None takes the number of columns minus one, between 1 and 16.
    lr : float or "auto"
        Adam learning rate. "auto": 1e-3 for batches of 64 rows, growing with the square root of the batch
        (2e-3 at 256 rows). Where the step budget ends training, the rate falls linearly to zero over it.
    max_epochs, patience : int
        Most epochs; epochs without a better validation bound before stopping.
    max_steps : int, "auto" or None
        The budget of gradient steps: training ends there (in the middle of an epoch if need be) if early
        stopping or max_epochs has not ended it before, so a big table trains in bounded time, and the
        learning rate falls linearly to zero over it. "auto": 20,000 steps, or 3 million rows' worth
        where that is fewer (batches of more than 150 rows). None: max_epochs alone, at a constant rate.
    batch_size : int or "auto"
        Rows per step. "auto" grows with the table: 64 up to about 23,000 rows, then the rows / 256 rounded
        to a power of two, at most 256.
    validation_fraction : float in [0, 1)
        Rows held out for early stopping (at most 10,000); 0 trains for the whole budget.
    precision : "auto", "bf16" or "fp32"
        Matmul precision in fit, transform and sample. "auto": bf16 for a table of at least 50,000 rows where
        the hardware has native bf16 (a CPU with AVX-512 BF16 or AMX, a GPU from Ampere on), fp32 otherwise:
        a small table's steps gain nothing from bf16. The imputations are float32 either way.
    threads : int or "auto"
        CPU threads torch uses in fit, transform and sample. "auto": every core for a table of at least
        50,000 rows, one below: a small table's matrices gain nothing from more, and a busy second core
        makes synchronising threads far slower than one (BENCHMARKS.md);
        cross-validation can run folds in parallel instead.
    random_state : int, RandomState or None
        Seeds the weights, the held-out rows, the training noise and the imputations.
    device : "cpu", "cuda", "cuda:N" or "auto"
        Where the model trains and imputes; "auto" is the GPU where torch sees one. A GPU named but absent
        is an error, never a silent fall-back to the CPU.
    fit_rows : int or None
        Fit on a sample of this many rows, drawn from random_state, where the table has more (fit_rows_ says how
        many it used); None: on every row. transform and sample take every row either way.
    activation : "relu" or "tanh"
        The hidden layers' activation (the not-MIWAE paper's networks use tanh).
    standardize : bool
        Continuous columns are modelled standardised by the mean and standard deviation of their observed entries;
        False: on the scale given (dates and durations, in seconds, are standardised either way). Where values
        go missing because of their size, the observed entries' mean and spread are biased; data already on a
        sensible scale (say standardised on a complete reference sample) may be better left as it is.
    n_init : int
        Fits from this many starts (initial weights and training noise of their own, the same held-out rows) and
        keeps the one with the best validation bound, as GaussianMixture's n_init keeps the best of its starts:
        on a small table, where one fit's outcome varies from start to start, the bound picks a better one. Fit
        takes n_init times as long; it needs validation_fraction above 0 where above 1.
    n_models : int
        Fits an ensemble of this many networks, each from a start of its own and holding out rows of its own (so
        that together they learn from every row), and imputes with all of them: transform averages their single
        imputations, and sample draws from their mixture, the i-th imputation from member i mod n_models. On a
        small table, where one network's imputations vary from start to start, the average varies less: in the
        tabular benchmark five MIWAEs imputed closer than one in 14 of its 15 settings, by 0.1 to 4.6 %
        (docs/tabular-benchmark.md). Fit, transform and sample take about n_models times as long; each member is the
        best of its own n_init starts.
    decoder : "mlp" or "linear"
        "mlp": the decoder mirrors the encoder's hidden layers. "linear": probabilistic PCA's decoder, as the
        not-MIWAE paper's PPCA model: the means (and label logits) affine in z, each continuous column's scale one
        number of its own. It suits columns that hang together linearly, and under values missing not at random
        it extrapolates beyond the observed ones as a linear truth does (docs/mnar-benchmark.md). It learns more
        slowly than the MLP: give it thousands of epochs (the benchmarks: max_epochs=3000, patience=300,
        max_steps=None); a fit whose history_.best_epoch is near max_epochs was still improving.
    min_scale : float > 0
        The smallest scale of a continuous column's decoder distribution, in standardised units (default 1e-3, as
        Mattei and Frellsen 2019). A density is unbounded where a column repeats a value exactly (a pixel's
        intensity 0, a count's 0): with a small floor the model concentrates on those spikes and imputes the rest
        poorly, or its training diverges. A floor of 1 brought MIWAE's imputations of scikit-learn's digits 9 to 20 %
        closer (docs/tabular-benchmark.md; with max_epochs=2000, patience=200, as the bound rises slowly at first);
        on tables of measurements (breast cancer, wine) it mostly took them further off.
    round_integers : bool
        Integer columns (numpy's or pandas' nullable integers) have their imputations rounded and kept within
        the observed range, and come back in their dtype; False: imputed as any number, they come back as
        float64. Every other column comes back in its own dtype either way: dates and durations (modelled in
        seconds) as dates and durations, floats of every width in their width.

    Attributes
    ----------
    schema_ : mivae.tables.schema.Schema, the column types and scalings.
    models_ : list of mivae.models.tabular.TabularVAE, the trained networks, n_models of them.
    model_ : the first of models_ (the trained network where n_models is 1).
    history_ : mivae.training.History, the first network's.
    latent_ : int, the latent dimension used.
    imputation_spread_ : float or None, how much the fitted model's single imputations of the training rows vary from
    row to row: over the continuous columns, the largest ratio of their standard deviation to the observed values'.
    Under 0.1, the model has collapsed onto the columns' means, and fit warns of it (a ConvergenceWarning). None: no
    continuous column with two or more entries missing and observed, or a file saved before fit measured it.
    batch_size_, threads_, steps_ : int, the batch size and thread count fit used, and the steps it took (its
    kept starts', summed over the networks).
    lr_ : float, the learning rate fit started from; precision_ : "bf16" or "fp32", the one fit used, as do
    transform and sample.
    n_features_in_, feature_names_in_ : as every scikit-learn estimator.
    """

    @torch.no_grad()
    def _single(self, model, values, observed):
        mu, _ = model.encode(values, observed)  # z = mu, as the thesis' single imputation
        keep = self._observed_slots(observed)
        return values * keep + model.means(model.decode(mu)) * (1 - keep)

    @torch.no_grad()
    def _draw(self, model, values, observed, imputations, generator, shared):
        mu, logvar = model.encode(values, observed)
        z = reparameterize(mu, logvar, eps=self._noise((imputations, self.latent_), len(values), generator, shared))
        draws = model.draw(model.decode(z), *self._observation_noise(imputations, len(values), generator, shared))
        keep = self._observed_slots(observed)
        return values * keep + draws * (1 - keep)  # (M, B, W)


class MIWAEImputer(_TabularImputer):
    """Imputes a table with MIWAE (Mattei and Frellsen 2019): the importance-weighted bound with K samples.

    Parameters are those of VAEImputer, and:

    importance_samples : int
        K of the training bound (5 to 50 in the paper; K = 1 is VAEImputer's masked ELBO).
    imputation_samples : int
        Proposals per row for imputation: the self-normalised importance-sampling mean (transform)
        and the pool that sampling-importance-resampling draws from (sample).

    With decoder="linear", Gaussian heads and continuous columns alone, the model's p(x) is Gaussian (probabilistic
    PCA's N(b, W W^T + diag(scale^2))), and everything the bound and importance sampling approximate is exact: fit
    maximises log p(x_obs) itself, the bound's limit as K grows (the encoder takes no part, importance_samples goes
    unused); transform gives the conditional mean of the gaps given the observed entries, and sample draws from
    that Gaussian conditional (imputation_samples goes unused).
    """

    def __init__(
        self,
        categorical=None,
        likelihood="gaussian",
        hidden=(128, 128),
        latent=None,
        lr="auto",
        max_epochs=500,
        patience=50,
        batch_size="auto",
        validation_fraction=0.1,
        precision="auto",
        importance_samples=20,
        imputation_samples=100,
        threads="auto",
        random_state=None,
        device="cpu",
        max_steps="auto",
        round_integers=True,
        fit_rows=None,
        activation="relu",
        standardize=True,
        n_init=1,
        decoder="mlp",
        min_scale=MIN_SCALE,
        n_models=1,
    ):
        super().__init__(
            categorical,
            likelihood,
            hidden,
            latent,
            lr,
            max_epochs,
            patience,
            batch_size,
            validation_fraction,
            precision,
            threads,
            random_state,
            device,
            max_steps,
            round_integers,
            fit_rows,
            activation,
            standardize,
            n_init,
            decoder,
            min_scale,
            n_models,
        )
        self.importance_samples = importance_samples
        self.imputation_samples = imputation_samples

    def _check_params(self):
        device = super()._check_params()
        check_whole("importance_samples", self.importance_samples, 1, error=InputError)
        check_whole("imputation_samples", self.imputation_samples, 1, error=InputError)
        return device

    @property
    def training_samples(self):
        return self.importance_samples

    def _proposals(self, model, values, observed, generator, shared):
        """Returns (log w (K, B), decoder params of what each of the K = imputation_samples proposals imputes)."""
        eps = self._noise((self.imputation_samples, self.latent_), len(values), generator, shared)
        return model.log_weights(values, observed, eps)

    def _expected(self, model, params):
        """Returns each proposal's expected encoded row (K, B, W)."""
        return model.means(params)

    def _resampled(self, model, chosen, imputations, rows, generator, shared):
        """Returns encoded rows (M, B, W) drawn from the proposals `chosen` by resampling, one per imputation."""
        return model.draw(chosen, *self._observation_noise(imputations, rows, generator, shared))

    def _exact_likelihood(self):
        # Where p(x) is Gaussian (the linear decoder over continuous columns), the bound's limit as K grows, log
        # p(x_obs) itself, is computable: training maximises it, and the encoder takes no part.
        if self.model_.factor_model() is None:
            return None

        def log_likelihood(model, values, observed):
            bias, weight, scale = model.factor_model()
            with torch.autocast(values.device.type, enabled=False):
                return factor_observed_log_density(bias, weight, scale, values, observed).float()

        return log_likelihood

    def _posterior(self, model, values, observed):
        """Returns (factor model, posterior means (B, L), Cholesky factors of the posterior precisions (B, L, L)) of
        the latent given each row's observed entries where p(x) is Gaussian (TabularVAE.factor_model: the linear
        decoder over continuous columns alone, whose encoding is the columns themselves); None where it is not."""
        model = model.factor_model()
        if model is None:
            return None
        bias, weight, scale = model
        with torch.autocast(values.device.type, enabled=False):
            return model, *factor_posterior(bias, weight, scale, values, observed)

    @torch.no_grad()
    def _single(self, model, values, observed):
        keep = self._observed_slots(observed)
        exact = self._posterior(model, values, observed)
        if exact is not None:  # p(x) is Gaussian: its conditional mean itself, which importance sampling approximates
            (bias, weight, _), means, _ = exact
            return values * keep + (bias + means @ weight.T).float() * (1 - keep)
        # The same K proposals for every row and call: the imputation is a fixed function of its row.
        log_w, params = self._proposals(model, values, observed, torch.Generator().manual_seed(self.seed_), shared=True)
        expected = (importance_weights(log_w)[..., None] * self._expected(model, params)).sum(0)  # (B, W)
        return values * keep + expected * (1 - keep)

    @torch.no_grad()
    def _draw(self, model, values, observed, imputations, generator, shared):
        rows = len(values)
        exact = self._posterior(model, values, observed)
        if exact is not None:  # exact draws: the latent from its Gaussian posterior, then the gaps given it
            (bias, weight, scale), means, factors = exact
            latent, width = weight.shape[1], values.shape[1]
            noise = self._noise((imputations, latent + width), rows, generator, shared).double()  # (M, B or 1, L + W)
            eps = noise[..., :latent].expand(imputations, rows, latent)[..., None]
            z = means + torch.linalg.solve_triangular(factors.mT, eps, upper=True).squeeze(-1)  # mean + C^-T eps
            draws = (bias + z @ weight.T + scale * noise[..., latent:]).float()
            keep = self._observed_slots(observed)
            return values * keep + draws * (1 - keep)
        log_w, params = self._proposals(model, values, observed, generator, shared)  # (K, B)
        cdf = importance_weights(log_w).cumsum(0).T  # (B, K)
        u = self._noise((imputations,), rows, generator, shared, uniform=True).expand(imputations, rows)
        picks = torch.searchsorted(cdf.contiguous(), u.T.contiguous()).clamp(max=len(log_w) - 1).T  # (M, B)
        columns = torch.arange(rows, device=values.device)[None, :]
        chosen = {
            key: ([v[picks, columns] for v in value] if isinstance(value, list) else value[picks, columns])
            for key, value in params.items()
        }
        draws = self._resampled(model, chosen, imputations, rows, generator, shared)
        keep = self._observed_slots(observed)
        return values * keep + draws * (1 - keep)


class NotMIWAEImputer(MIWAEImputer):
    """Imputes a table whose values go missing because of what they are: not-MIWAE (Ipsen, Mattei and Frellsen
    2021), MIWAE with a model of the pattern of gaps, p(x, s) = p(x) p(s | x).

    Where large incomes go unreported or low readings fall below a sensor's range, the observed values are not
    a fair sample of the column, and an imputer that assumes they are (every other one here) fills the gaps
    with values that are too typical. not-MIWAE learns how each column's own value makes it go missing and
    imputes with the importance weights that include that chance.

    Parameters are those of MIWAEImputer, and:

    missingness : "self-masking", "self-masking-high" or "self-masking-low"
        The model of p(s | x). "self-masking": each continuous column is observed with probability
        sigmoid(-a (x - b)), a and b learned, the sign of a too; each categorical column with a probability
        learned per label. "self-masking-high" ("-low"): the same, with the sign known: a column's high
        (low) values are the ones that go missing more often, as where values above a limit are censored.
        Knowing the sign helps where it is true and misleads where it is not.

    Single imputation is the importance-weighted mean of the missing values drawn with the proposals (not of
    the decoder's means: under self-masking a value's being missing says something about it); multiple
    imputation resamples those draws by their weights. Being draws, they need more proposals than MIWAE's
    means for the same Monte Carlo error: `imputation_samples` is 1,000 by default (MIWAEImputer: 100).
    """

    def __init__(
        self,
        categorical=None,
        likelihood="gaussian",
        hidden=(128, 128),
        latent=None,
        lr="auto",
        max_epochs=500,
        patience=50,
        batch_size="auto",
        validation_fraction=0.1,
        precision="auto",
        importance_samples=20,
        imputation_samples=1000,
        threads="auto",
        random_state=None,
        device="cpu",
        max_steps="auto",
        round_integers=True,
        fit_rows=None,
        activation="relu",
        standardize=True,
        n_init=1,
        decoder="mlp",
        min_scale=MIN_SCALE,
        missingness="self-masking",
        n_models=1,
    ):
        super().__init__(
            categorical,
            likelihood,
            hidden,
            latent,
            lr,
            max_epochs,
            patience,
            batch_size,
            validation_fraction,
            precision,
            importance_samples,
            imputation_samples,
            threads,
            random_state,
            device,
            max_steps,
            round_integers,
            fit_rows,
            activation,
            standardize,
            n_init,
            decoder,
            min_scale,
            n_models,
        )
        self.missingness = missingness

    def _check_params(self):
        device = super()._check_params()
        check_choice("missingness", self.missingness, MISSINGNESS, error=InputError)
        return device

    @property
    def _missingness(self):
        return self.missingness

    def _proposals(self, model, values, observed, generator, shared):
        rows = len(values)
        eps = self._noise((self.imputation_samples, self.latent_), rows, generator, shared)
        noise = self._noise((self.imputation_samples, model.n_continuous), rows, generator, shared)
        return model.log_weights(values, observed, eps, noise)

    def _expected(self, model, params):
        # each proposal's own draws of the missing values, and its labels' distribution given that they are missing
        return model.means({**params, "mean": params["drawn"], "logits": params["tilted"]})

    def _resampled(self, model, chosen, imputations, rows, generator, shared):
        # Each imputation draws its values afresh given its proposal's latent, from p(x | z, missing), so that two
        # imputations resampling the same proposal still differ.
        candidates = self._noise((CANDIDATES, imputations, model.n_continuous), rows, generator, shared)
        pick = self._noise((imputations, model.n_continuous), rows, generator, shared, uniform=True)
        labels = self._noise((imputations, len(model.blocks)), rows, generator, shared, uniform=True)
        return model.draw_missing(chosen, candidates.movedim(2, 1), pick, labels)


IMPUTERS = (VAEImputer, MIWAEImputer, NotMIWAEImputer)
# What fit learns besides the network and the schema, with its type: what `save` writes and `load` checks.
_FITTED = {
    "fit_rows_": int,
    "latent_": int,
    "imputation_spread_": float,  # or None: no column to measure it on, or a file saved before fit measured it
    "seed_": int,
    "precision_": str,
    "batch_size_": int,
    "lr_": float,
    "steps_": int,
    "threads_": int,
    "n_features_in_": int,
}


def load_imputer(path, device=None):
    """Returns the imputer, of whichever class, that `save` wrote into the folder `path` (see `VAEImputer.load`)."""
    return _TabularImputer.load(path, device)


class MultipleImputationClassifier(ClassifierMixin, BaseEstimator):
    """Classifies rows with missing entries by averaging a classifier's class probabilities over M imputations.

    The thesis' multiple imputation (§2.2.4) for any table: the imputer is fitted on X (labels
    unseen), the classifier is trained on M imputations of every training row stacked, and
    predict_proba is the mean of its probabilities over M imputations of each row. The classifier
    sees the imputer's encoding (standardised continuous columns, one-hot categorical ones), so it
    needs no preprocessing of its own.

    Parameters
    ----------
    imputer : VAEImputer, MIWAEImputer or None
        Cloned and fitted on X; None takes MIWAEImputer().
    classifier : a scikit-learn classifier with predict_proba, or None
        Cloned and fitted on the imputations; None takes LogisticRegression(max_iter=1000).
    n_imputations : int
        M, the imputations per row in training and in prediction.
    add_indicator : bool
        Also give the classifier the observed mask (1 = observed), so missingness itself can inform
        the class (useful when values are missing not at random).
    random_state : int, RandomState or None
        Seeds the imputer (where its own random_state is None) and the imputations.

    Attributes
    ----------
    imputer_, classifier_ : the fitted estimators.
    classes_ : the class labels, as given.
    n_features_in_, feature_names_in_ : as every scikit-learn estimator.
    """

    def __init__(self, imputer=None, classifier=None, n_imputations=10, add_indicator=False, random_state=None):
        self.imputer = imputer
        self.classifier = classifier
        self.n_imputations = n_imputations
        self.add_indicator = add_indicator
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _features(self, X, seed, shared):
        draws, observed = self.imputer_.encoded_imputations(X, self.n_imputations, seed=seed, shared=shared)
        if self.add_indicator:
            draws = np.concatenate([draws, np.broadcast_to(observed, (len(draws), *observed.shape))], axis=2)
        return draws  # (M, n, features)

    def fit(self, X, y):
        """Fits the imputer on X and the classifier on M imputations of X with labels y. Returns self."""
        imputer = MIWAEImputer() if self.imputer is None else self.imputer
        if not isinstance(imputer, _TabularImputer):
            raise InputError(
                f"imputer must be a VAEImputer or MIWAEImputer, which draw multiple imputations; "
                f"got {type(imputer).__name__}."
            )
        check_whole("n_imputations", self.n_imputations, 1, error=InputError)
        categorical = imputer.categorical
        X = _validate_table(self, X, reset=True, categorical=categorical)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if len(y) != len(X):
            raise InputError(f"X has {len(X)} rows but y has {len(y)} labels.")
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        rng = check_random_state(self.random_state)
        self.imputer_ = clone(imputer)
        if self.imputer_.random_state is None and self.random_state is not None:
            self.imputer_.set_params(random_state=int(rng.randint(2**31 - 1)))
        self.imputer_.fit(X)
        self.seed_ = int(rng.randint(2**31 - 1))
        features = self._features(X, self.seed_, shared=False)
        self.classifier_ = clone(LogisticRegression(max_iter=1000) if self.classifier is None else self.classifier)
        self.classifier_.fit(features.reshape(-1, features.shape[-1]), np.tile(encoder.transform(y), len(features)))
        return self

    def predict_proba(self, X):
        """Returns the class probabilities (n, classes), averaged over M imputations of each row."""
        check_is_fitted(self, "classifier_")
        X = _validate_table(self, X, reset=False, categorical=self.imputer_.categorical)
        features = self._features(X, self.seed_, shared=True)
        proba = np.zeros((features.shape[1], len(self.classes_)))
        for imputation in features:
            proba[:, self.classifier_.classes_] += self.classifier_.predict_proba(imputation)
        return proba / len(features)

    def predict(self, X):
        """Returns the most probable class of each row, as labelled in fit."""
        proba = self.predict_proba(X)  # checks that the classifier was fitted
        return self.classes_[proba.argmax(1)]

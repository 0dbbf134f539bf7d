"""Model selection as in thesis §3.5: random search with Optuna, then one retraining and one test.

The protocol, for every kind:
1. Random search (Bergstra and Bengio 2012) over the space below, after a first trial of the
   default configuration; each trial trains with early stopping on the validation set and
   records its best epoch.
2. VAEs are ranked by validation negative ELBO, classifiers by validation accuracy.
3. The best configuration is retrained on train + validation for its recorded number of
   epochs and evaluated once on the test set.
Type 2 searches take a VAE that was itself selected and retrained on train + validation.

The study lives in a database: by default SQLite in the search directory, so an
interrupted search resumes with `resume=True`; or any Optuna storage URL, such as a
PostgreSQL server shared by a fleet of workers. `trials` counts the whole study.
"""

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch

from mivae import health as health_check
from mivae import readback
from mivae.config import CNNConfig, MLPConfig, VAEConfig, to_dict
from mivae.errors import MivaeError, check_interrupt, check_whole
from mivae.hardware import resolve_device, resolve_precision
from mivae.images.pipeline import train_model
from mivae.images.problem import CorruptedSplit, Problem, make_problem
from mivae.images.runs import load_run, save_run, write_json
from mivae.models import KINDS
from mivae.training import TrainingDiverged


class UnhealthyModel(Exception):
    """A trial's model trained but failed its health check (mivae.health): recorded as a failed trial, with the
    reason."""


class _QuietFailures(logging.Filter):
    """Drops Optuna's two warnings, one with a traceback, about a trial that failed its health check or was
    interrupted by the user: an expected outcome, recorded with its reason in the trial and in search.json, and a
    stop that mivae reports in one line."""

    def __init__(self):
        super().__init__()
        self.trials = set()

    def filter(self, record):
        return not any(record.getMessage().startswith(f"Trial {n} failed") for n in self.trials)


# ----------------------------------------------------------------------------------------
# Search spaces: (name, low, high, log) for numbers. The thesis gives no ranges; these
# cover the sizes it shows (Figs. 5 and 6) with room on both sides, on log scales where
# the effect of a value goes with its order of magnitude.

SPACES = {
    "vae": {
        "layers": ((1, 3, False), "hidden layers of the encoder (the decoder mirrors it); §3.3 lists it first"),
        "nodes": ((128, 1024, True), "nodes per hidden layer; Fig. 5 shows a few hundred"),
        "lr": ((1e-4, 3e-3, True), "Adam learning rate, around Adam's usual 1e-3"),
        "l2": ((1e-8, 1e-3, True), "L2 coefficient; from negligible to strong"),
        "latent": ((2, 64, True), "latent dimension L; the thesis picks it per corruption level"),
    },
    "mlp": {
        "nodes": ((64, 1024, True), "nodes of each hidden layer, drawn per layer"),
        "l2": ((1e-8, 1e-3, True), "L2 coefficient; the MLP's only regulariser"),
        "lr": (
            (0.01, 1.0, True),
            "AdaDelta learning rate; at 90 % white pixels Keras' 1.0 never leaves a constant "
            "answer, 0.1 and 0.01 learn (docs/reproduction.md)",
        ),
    },
    "cnn": {
        "dropout_conv": ((0.0, 0.6, False), "dropout before the dense layer"),
        "dropout_dense": ((0.0, 0.7, False), "dropout after the dense layer"),
        "dense": ((32, 512, True), "nodes of the dense layer"),
    },
}
MLP_LAYERS = (2, 3, 4)  # searched separately, as §3.5 does


def _suggest(trial, name, bounds):
    low, high, log = bounds
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=log)
    return trial.suggest_float(name, low, high, log=log)


def suggest_config(kind, trial, layers=2):
    """Returns the model config a `trial` draws for `kind` (Type 2 kinds draw their classifier)."""
    part = KINDS[kind].part
    if part == "vae":
        space = {k: bounds for k, (bounds, _) in SPACES["vae"].items()}
        n = _suggest(trial, "layers", space["layers"])
        nodes = _suggest(trial, "nodes", space["nodes"])
        return VAEConfig(
            hidden=(nodes,) * n,
            latent=_suggest(trial, "latent", space["latent"]),
            lr=_suggest(trial, "lr", space["lr"]),
            l2=_suggest(trial, "l2", space["l2"]),
        )
    if part == "mlp":
        (nodes, _), (l2, _), (lr, _) = SPACES["mlp"]["nodes"], SPACES["mlp"]["l2"], SPACES["mlp"]["lr"]
        hidden = tuple(_suggest(trial, f"nodes_{i + 1}", nodes) for i in range(layers))
        return MLPConfig(hidden=hidden, l2=_suggest(trial, "l2", l2), lr=_suggest(trial, "lr", lr))
    return CNNConfig(**{k: _suggest(trial, k, bounds) for k, (bounds, _) in SPACES["cnn"].items()})


def default_params(kind, layers=2):
    """The parameters of `kind`'s default configuration (mivae.config), as a trial of its space draws them.

    Every study's first trial runs them, so even a budget of one trial selects a sensible model.
    The VAE's default L2 of 0 lies below the space; its floor, 1e-8, stands in for it.
    """
    part = KINDS[kind].part
    if part == "vae":
        d = VAEConfig()
        return {
            "layers": len(d.hidden),
            "nodes": d.hidden[0],
            "latent": d.latent,
            "lr": d.lr,
            "l2": SPACES["vae"]["l2"][0][0],
        }
    if part == "mlp":
        d = MLPConfig()
        return {**{f"nodes_{i + 1}": d.hidden[0] for i in range(layers)}, "l2": d.l2, "lr": d.lr}
    d = CNNConfig()
    return {"dropout_conv": d.dropout_conv, "dropout_dense": d.dropout_dense, "dense": d.dense}


def space_of(kind):
    """The search space `kind` draws from (a Type 2 kind: its classifier's), as plain values: part of a study's
    identity."""
    return {k: list(bounds) for k, (bounds, _) in SPACES[KINDS[kind].part].items()}


def describe_spaces():
    """Returns the search spaces as printable text, with the reason for each range."""
    lines = []
    for kind, space in SPACES.items():
        title = f"{kind} (searched separately with {', '.join(map(str, MLP_LAYERS))} layers)" if kind == "mlp" else kind
        lines.append(f"{title}:")
        for name, ((low, high, log), reason) in space.items():
            lines.append(f"  {name:<14} {low:g} to {high:g}{' (log scale)' if log else ''}  - {reason}")
    lines.append("Type 2 kinds (vae+mlp, vae+cnn) search their classifier's space on top of a selected VAE.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Random draws keyed by budget slot: reproducible, never duplicated across workers, and the same
# after a crash as without one.


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Random search whose draws depend only on (seed, budget slot, parameter name).

    Independent uniform draws, as Optuna's RandomSampler makes, but two workers of one
    study never draw the same configuration, and a rerun with the same seed draws the same.
    A trial's slot is its place among the trials that spend budget (see `draw_slot`), so a
    trial run again after a kill or a dead worker draws what the lost one drew: a resumed
    study ends with the configurations of an uninterrupted one. With `first` (parameter
    values), slot 0 runs them instead: the default configuration.
    """

    def __init__(self, seed=0, first=None, storage=None):
        check_whole("the search seed", seed)
        # the storage the study keeps its trials in: where a trial's slot is recorded, by Optuna's public storage API
        self.seed, self.first, self.storage = seed, first or {}, storage

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        slot = draw_slot(study, trial)
        if name in self.first and slot == 0:
            return self.first[name]
        rng = np.random.default_rng([self.seed, slot, zlib.crc32(name.encode())])
        d = distribution
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            return d.choices[rng.integers(len(d.choices))]
        low, high = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
        if isinstance(d, optuna.distributions.IntDistribution):
            if d.log:
                value = round(math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5))))
                return int(min(max(value, d.low), d.high))
            return int(d.low + d.step * rng.integers((d.high - d.low) // d.step + 1))
        value = rng.uniform(low, high)
        return float(min(max(math.exp(value) if d.log else value, d.low), d.high))  # exp may land an ulp outside


# ----------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class SearchResult:
    """What a finished search produced."""

    best_params: dict
    best_value: float
    best_epoch: int
    test_metrics: dict
    run_dir: Path
    health: dict | None = None  # the final model's health check (mivae.health); failed if every trial failed


def _merge(a, b):
    """Returns the concatenation of two `CorruptedSplit`s: train + validation for the final retraining."""
    return CorruptedSplit(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("x", "clean", "mask", "y")))


def default_storage(directory):
    """Returns the SQLite URL of the study kept in a search directory."""
    return f"sqlite:///{Path(directory).resolve() / 'study.db'}"


# Pruning (thesis §3.5 already stops early to save time): a trial whose validation score after an epoch is worse than
# the median of the earlier trials' at the same epoch stops there. The first trials are never pruned, nor any trial
# before the epoch from which early stopping may act (TrainConfig.min_epochs), so a slow start is not taken for a
# hopeless one; and at least two earlier trials must have reached that epoch, so a slow learner that outlasts the
# others is not judged against the single best one alone.
PRUNE_AFTER_TRIALS = 2


def median_pruner(train):
    """Returns the Optuna pruner of a search with training settings `train`: the median rule above."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=max(train.min_epochs, 1), n_min_trials=PRUNE_AFTER_TRIALS
    )


@contextmanager
def _experimental():
    """A context in which Optuna's heartbeats and stale-trial sweep do not warn that they are experimental (they have
    been stable since Optuna 2.9)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_study(storage, study_name, seed, resume, direction, first=None, pruner=None):
    """Returns the Optuna study, created or (with `resume`) loaded; stale trials of dead workers marked failed.

    Workers of a fleet join a shared study by passing `resume` too. `first`: the parameters
    of the first trial (see TrialSeededSampler). `pruner`: an Optuna pruner (default: none).
    """
    url = storage
    for attempt in range(5):
        try:
            with _experimental():
                rdb = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
            break
        except Exception as e:  # SQLAlchemy and driver errors have no common base worth naming
            if attempt == 4 or "Failed to import" in str(e):
                raise MivaeError(f"cannot open the study storage {url}: {str(e).splitlines()[0]}.") from None
            time.sleep(0.5 * (attempt + 1))  # workers starting together race to create the tables
    existing = {s.study_name for s in optuna.study.get_all_study_summaries(rdb)}
    if study_name in existing and not resume:
        raise MivaeError(f"a study named {study_name!r} already exists in {url}; pass --resume to continue it.")
    study = optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        sampler=TrialSeededSampler(seed, first, storage=rdb),
        pruner=pruner or optuna.pruners.NopPruner(),
    )
    with _experimental():
        optuna.storages.fail_stale_trials(study)  # workers whose heartbeat stopped more than 90 s ago
    return study


def _storage_and_id(study, trial):
    """(the storage, the storage's id of `trial`) of a study sampled by TrialSeededSampler, by Optuna's public storage
    API: a study has no public call to change another trial's state or attributes; its storage does."""
    storage = getattr(study.sampler, "storage", None)
    if storage is None:
        raise ValueError("the study's sampler must be a TrialSeededSampler given the study's storage.")
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def interrupted_running_trials(study):
    """Marks the study's RUNNING trials failed (interrupted): for resuming a local study no worker runs."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage, trial_id = _storage_and_id(study, t)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


def trial_outcome(state, failure=None, interrupted=False):
    """How a trial ended, from its state name, recorded failure and interrupted mark: complete, pruned, failed (with a
    recorded failure: an unhealthy model), lost (interrupted, or died with its worker, which leaves a failed trial
    without a recorded failure) or running."""
    if interrupted or (state == "FAIL" and not failure):
        return "lost"
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(state, "running")


def spends_budget(t):
    """Whether trial t counts against --trials: finished or running, and not lost to a dead worker or over budget."""
    if t.user_attrs.get("over_budget"):
        return False
    return trial_outcome(t.state.name, t.user_attrs.get("failure"), t.user_attrs.get("interrupted")) != "lost"


def _budget_slot(study, trial):
    """The trial's place in the budget: the trials before it that spend budget."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and spends_budget(t))


def draw_slot(study, trial):
    """Returns the slot whose draw `trial` runs, recorded on the trial the first time it is asked.

    Its place in the budget (`_budget_slot`): the number a trial has in an uninterrupted study,
    since trials lost to a kill or a dead worker do not count. In a fleet a worker can die while
    later trials run; then that place may already be held by a running trial, and the trial takes
    the lowest slot no budget-spending trial holds, which is the lost trial's.
    """
    storage, trial_id = _storage_and_id(study, trial)
    recorded = storage.get_trial(trial_id).user_attrs.get("slot")
    if recorded is not None:
        return recorded
    others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and spends_budget(t)]
    held = {t.user_attrs.get("slot") for t in others}
    slot = _budget_slot(study, trial)
    if slot in held:
        slot = min(set(range(len(held) + 1)) - held)
    storage.set_trial_user_attr(trial_id, "slot", slot)  # a sampler is given frozen trials: no setter of their own
    return slot


def _settings(kind, layers, data, train):
    """What a study's trials depend on; a resumed or joined study must have been run with the same."""
    return {
        "kind": kind,
        "layers": layers,
        "data": to_dict(data),
        "space": space_of(kind),
        "train": {k: v for k, v in to_dict(train).items() if k not in ("device", "precision")},
    }


def _recorded_settings(study, settings):
    """The settings `study` was first run with, or None for a new study."""
    attrs = study.user_attrs
    if "settings" in attrs:
        return attrs["settings"]
    if attrs:  # studies of earlier versions hold each setting as its own attribute
        return {k: attrs.get(k) for k in settings}
    return None


def _checkpoint_namer(folder, kind, layers, data, train, vae_run):
    """Returns config -> the checkpoint file of a trial of that configuration in `folder`, or None without a folder.

    The name is a digest of everything the training depends on: a trial run again after a kill draws
    the lost one's configuration, so it finds that trial's checkpoint and goes on from it; any other
    training, with another VAE, precision or setting, finds none.
    """
    if folder is None:
        return lambda config: None
    fixed = _settings(kind, layers, data, train) | {"precision": str(resolve_precision(train.precision, train.device))}
    if vae_run is not None:
        weights = hashlib.sha256()
        for name, tensor in vae_run.model.state_dict().items():
            weights.update(name.encode())
            weights.update(tensor.detach().float().cpu().numpy().tobytes())
        fixed["vae_weights"] = weights.hexdigest()

    def name(config):
        key = json.dumps(fixed | {"config": to_dict(config)}, sort_keys=True, default=str)
        return Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"

    return name


def run_study(
    study,
    kind,
    layers,
    data,
    train,
    trials,
    problem,
    vae_run,
    deadline=None,
    on_trial=None,
    poll=2.0,
    keep_runs=None,
    checkpoints=None,
):
    """Runs trials of `study` until `trials` of them have run their course, counting every worker's.

    A worker that finds the budget taken waits for the other workers' running trials, so
    that the winner is picked from a finished study; if one of them dies, its slot is run
    again here. Stops early at `deadline` (time.monotonic()). With `keep_runs`, a folder,
    every finished trial's run is saved there as `<trial number>/`. With `checkpoints`, a
    folder, a trial's training keeps its state there while it runs, so that a trial lost
    to a kill goes on from its last checkpoint when it is run again.
    """
    checkpoint_of = _checkpoint_namer(checkpoints, kind, layers, data, train, vae_run)
    higher_is_better = KINDS[kind].higher_is_better
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    quiet = _QuietFailures()
    optuna_log = logging.getLogger("optuna.study._optimize")  # where Optuna logs a failed trial

    def objective(trial):
        if _budget_slot(study, trial) >= trials:
            trial.set_user_attr("over_budget", True)
            study.stop()
            raise optuna.TrialPruned("the study's trial budget was already taken by other workers")
        config = suggest_config(kind, trial, layers)
        trial.set_user_attr("config", to_dict(config))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        def report(epoch, history):
            trial.report(history.val_score[-1], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", epoch)
                raise optuna.TrialPruned(
                    f"pruned after epoch {epoch}: its validation score {history.val_score[-1]:.4f} "
                    f"is worse than the median of the earlier trials at that epoch"
                )

        checkpoint = checkpoint_of(config)
        try:
            run = train_model(
                kind, data, config, train, problem=problem, vae_run=vae_run, on_epoch=report, checkpoint=checkpoint
            )
        except TrainingDiverged as e:
            _discard(checkpoint)
            trial.set_user_attr("failure", str(e))
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned:
            _discard(checkpoint)
            raise
        except KeyboardInterrupt:  # the checkpoint stays, for the trial that runs this one again
            quiet.trials.add(trial.number)
            raise
        trial.set_user_attr("best_epoch", run.history.best_epoch)
        if keep_runs is not None:
            save_run(run, Path(keep_runs) / str(trial.number))
        _discard(checkpoint)
        value = run.metrics["val_accuracy" if higher_is_better else "val_negative_elbo"]
        health = run.metrics["health"]
        if not health["ok"]:
            trial.set_user_attr("failure", f"the model failed its health check: {health['reason']}")
            trial.set_user_attr("unhealthy_value", value)  # kept, for when no trial of the study is healthy
            quiet.trials.add(trial.number)
            raise UnhealthyModel(health["reason"])
        return value

    def budget_used():
        return sum(1 for t in study.get_trials(deepcopy=False, states=done_states) if spends_budget(t))

    def after_trial(study_, trial):
        check_interrupt()  # a Ctrl-C during Optuna's garbage collection after the trial was swallowed there
        if on_trial is not None:
            on_trial(study_)
        if budget_used() >= trials:
            study_.stop()

    while budget_used() < trials:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        running = [
            t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if spends_budget(t)
        ]
        if running and budget_used() + len(running) >= trials:
            time.sleep(poll)  # the rest of the budget is running on other workers
            with _experimental():
                optuna.storages.fail_stale_trials(study)
            continue
        try:
            optuna_log.addFilter(quiet)
            study.optimize(
                objective, timeout=remaining, callbacks=[after_trial], catch=(UnhealthyModel,), gc_after_trial=True
            )
        finally:
            optuna_log.removeFilter(quiet)


def _discard(checkpoint):
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)


# What search.json holds, as `search` writes it. Fields that searches of older versions did not write, and that no
# reader needs, may be absent (readers take them with .get).
_MAYBE = lambda shape: readback.Either(None, shape)  # noqa: E731
_LATER = lambda shape: readback.Optional(_MAYBE(shape))  # noqa: E731
SEARCH_SHAPE = {
    "kind": str,
    "study": _LATER(str),
    "studies": _LATER(readback.Map(_MAYBE(readback.NUMBER))),
    "best_trial": _LATER(readback.WHOLE),
    "best_value": readback.NUMBER,
    "health": _LATER(health_check.SHAPE),
    "best_epoch": readback.WHOLE,
    "retrained": _LATER(bool),
    "best_config": readback.Map(readback.ANY),
    "test_metrics": _LATER(readback.Map(readback.NUMBER)),
    "trials": [
        {
            "number": readback.WHOLE,
            "state": str,
            "value": _MAYBE(readback.NUMBER),
            "params": readback.Map(readback.ANY),
            "best_epoch": _LATER(readback.WHOLE),
            "failure": _LATER(str),
            "pruned_at": _LATER(readback.WHOLE),
            "interrupted": _LATER(bool),
        }
    ],
}


def search(
    kind,
    data,
    trials,
    directory,
    train,
    storage=None,
    study_name=None,
    seed=0,
    resume=False,
    timeout=None,
    vae_run=None,
    layers=(2,),
    data_dir=None,
    problem=None,
    on_trial=None,
    retrain=True,
    prune=True,
):
    """Runs the §3.5 protocol for `kind` and returns its `SearchResult`; writes `search.json` and `final/`.

    directory: the search directory (studies, result, final run). storage: an Optuna
    storage URL shared by workers; by default SQLite in `directory`. For MLP kinds, one
    study of `trials` trials per hidden-layer count in `layers`; the winner over all of
    them by validation score is the one retrained and tested. on_trial(study): called
    after each finished trial (progress). With `retrain` false (a cheaper protocol for
    small budgets), the winning trial's own model, trained on train with early stopping
    on validation, is the final one: every trial's run is kept in `trials/`, and a Type 2
    search accepts a VAE selected the same way. With `prune`, hopeless trials stop early
    (`median_pruner`). A trial whose model fails its health check is recorded as failed, with the
    reason; the winner is the best healthy trial, and only if none is healthy the best of
    the others, marked as failed in search.json.
    """
    check_whole("the search seed", seed)
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MivaeError(f"cannot create the search directory {directory}: {e.strerror or e}.") from None
    if retrain and KINDS[kind].imputer and vae_run is not None and vae_run.history and vae_run.history.val_score:
        raise MivaeError(
            "the VAE run was trained with early stopping on the validation set; a Type 2 search needs the "
            "selected VAE retrained on train + validation (§3.5): the final/ run of 'mivae search vae'."
        )
    problem = problem or make_problem(data, data_dir)
    direction = "maximize" if KINDS[kind].higher_is_better else "minimize"
    deadline = None if timeout is None else time.monotonic() + timeout
    counts = layers if KINDS[kind].part == "mlp" else (None,)
    studies = []
    for n in counts:
        label = f"{kind}{n}" if n else kind
        name = f"{study_name}-{n}" if study_name and len(counts) > 1 else study_name
        name = name or f"{label}-{data.dataset}-{data.method}-{data.level:g}-seed{data.seed}"
        study = open_study(
            storage or default_storage(directory),
            name,
            seed,
            resume,
            direction,
            default_params(kind, n or 2),
            median_pruner(train) if prune else None,
        )
        settings = _settings(kind, n, data, train)
        recorded = _recorded_settings(study, settings)
        if recorded is None:
            study.set_user_attr("settings", settings)  # one write, so a worker joining at once sees all or nothing
        elif recorded != settings:
            raise MivaeError(
                f"the study {name!r} was run with other settings (kind, layers, data or training) than "
                f"this search; give this search another --study name or --out."
            )
        if resume and storage is None:
            interrupted_running_trials(study)
        run_study(
            study,
            kind,
            n,
            data,
            train,
            trials,
            problem,
            vae_run,
            deadline,
            on_trial,
            keep_runs=None if retrain else directory / "trials" / study.study_name,
            checkpoints=directory / "checkpoints" / study.study_name,
        )
        studies.append(study)
    return finish(kind, data, studies, directory, train, problem, vae_run, retrain)


def finish(kind, data, studies, directory, train, problem, vae_run, retrain=True):
    """Retrains the best configuration of all `studies` on train + validation and tests it once.

    Without `retrain`, the best trial's kept run is the final run.
    """
    healthy = [
        (s, t, t.value)
        for s in studies
        for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    unhealthy = [
        (s, t, t.user_attrs["unhealthy_value"])
        for s in studies
        for t in s.get_trials(deepcopy=False)
        if "unhealthy_value" in t.user_attrs
    ]
    if not healthy and not unhealthy:
        reasons = {t.user_attrs.get("failure") for s in studies for t in s.get_trials(deepcopy=False)} - {None}
        raise MivaeError(
            f"every trial of the search failed ({'; '.join(sorted(reasons)) or 'no trial finished'}); "
            f"no configuration can be selected."
        )
    pick = max if KINDS[kind].higher_is_better else min  # lowest validation negative ELBO, highest accuracy
    study, best, best_value = pick(healthy or unhealthy, key=lambda c: c[2])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in best.user_attrs["config"].items()}
    config = KINDS[kind].config(**fields)
    epochs = best.user_attrs["best_epoch"]
    if retrain:
        both = Problem(
            _merge(problem.train, problem.val), problem.val, problem.test, problem.image_shape, problem.n_classes
        )
        final = train_model(
            kind, data, config, replace(train, epochs=epochs), problem=both, vae_run=vae_run, validate=False
        )
    else:
        final = load_run(directory / "trials" / study.study_name / str(best.number), resolve_device(train.device))
    run_dir = save_run(final, directory / "final")
    health = final.metrics.get("health")
    if not healthy:  # the kept model comes from a trial that failed on held-out validation images
        why = best.user_attrs["failure"].removeprefix("the model failed its health check: ")
        health = {
            "ok": False,
            "reason": f"no trial passed its health check; the best failed one was kept: {why}",
            "measured": (health or {}).get("measured"),
        }
    result = {
        "kind": kind,
        "study": study.study_name,
        "studies": {s.study_name: pick((c[2] for c in healthy if c[0] is s), default=None) for s in studies},
        "best_trial": best.number,
        "best_value": best_value,
        "health": health,  # the final model's health check on validation images, failed if every trial failed
        "best_epoch": epochs,
        "retrained": retrain,
        "best_config": best.user_attrs["config"],
        "test_metrics": {k: v for k, v in final.metrics.items() if k.startswith("test")},
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "failure": t.user_attrs.get("failure"),
                "pruned_at": t.user_attrs.get("pruned_at"),
                "interrupted": bool(t.user_attrs.get("interrupted")),
            }
            for t in study.get_trials(deepcopy=False)
        ],
    }
    try:
        write_json(directory / "search.json", result)
    except OSError as e:
        raise MivaeError(f"cannot write {directory / 'search.json'}: {e.strerror or e}.") from None
    return SearchResult(best.params, best_value, epochs, result["test_metrics"], run_dir, health)

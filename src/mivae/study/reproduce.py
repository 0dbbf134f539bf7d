"""The study of thesis §4 as cached units of work: presets, the matrix of searches and evaluations.

    RUN_DIR/study.json                       the preset and seed; a resumed run must match them
    RUN_DIR/units/<label>-<key>/             one search per trained model (study.db, search.json, final/)
    RUN_DIR/results/<group>/<name>.json      one evaluation per (model, test set), with the key it was made from
    RUN_DIR/results/table3.json              Table 3: three VAEs of different quality
    RUN_DIR/results/figures/*.json           the images Figures 4, 8, 9 and 13 show
    RUN_DIR/clock/<host>-<pid>-<start>.json  when each invocation ran, kept up to date while it runs
    RUN_DIR/tasks/.<task>.lock               held by the worker running that task
    RUN_DIR/tasks/<task>.json                how long the task took, for the time left of later invocations
    RUN_DIR/report/                          written by mivae.study.report from study.json, results/ and clock/ alone

A key is the hash of everything a unit depends on (its kind, data, training settings,
search budget, seed and the keys of the units it builds on). A unit whose key already
has a finished artifact is reused; an interrupted search resumes its Optuna study.

Several workers may share one run directory, on a machine whose cores one process cannot keep
busy: the same command started twice, say. The study is a list of tasks (a search with its
evaluations, say), each listed after the tasks whose results it uses. A worker claims a task with a
lock file (RUN_DIR/tasks/.<task>.lock) while it runs it; a worker that finds a ready task claimed
takes the next ready one and comes back to it later, reusing its results, so the workers share the
study between them. Each unit and evaluation is claimed with its own lock file too (`.lock` in its
folder), so a worker that reaches one another worker is running waits for it and reuses its result.
A fleet with --storage shares the searches' trials instead, so its workers take no such lock.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from mivae import readback
from mivae.artifacts import remove_stale_temporaries
from mivae.config import DataConfig, TrainConfig, VAEConfig, to_dict
from mivae.errors import MivaeError
from mivae.hardware import resolve_device, resolve_precision
from mivae.images.corruption import METHODS
from mivae.images.pipeline import evaluate_run, train_model
from mivae.images.problem import make_problem
from mivae.images.runs import load_run, save_run, write_json
from mivae.models import KINDS
from mivae.models.distributions import reparameterize
from mivae.study import beyond
from mivae.study.search import SEARCH_SHAPE, search, space_of

LEVELS = (0.5, 0.7, 0.9)
# The six settings of §4 by short name, in the order the study runs them: rp70 = Random Pixels 70 %.
SETTINGS = {f"{''.join(w[0] for w in m.split('-'))}{round(lv * 100)}": (m, lv) for m in METHODS for lv in LEVELS}
SEARCHED = ("vae", "mlp", "cnn", "vae+mlp", "vae+cnn")
BEYOND = ("mask-mlp", "mask-cnn", "incomplete-vae", "incomplete-vae+mlp", "imputed-mlp")  # the beyond stage's models
PARTS = ("vae", "mlp", "cnn")  # what a preset's patience is given for: the trained part of a kind
# Table 3: two VAEs deliberately weaker than the selected one at Random Pixels 70 % (one epoch each).
WEAK_VAES = {"weaker": VAEConfig(hidden=(128,), latent=2), "weakest": VAEConfig(hidden=(16,), latent=1)}


@dataclass(frozen=True)
class Preset:
    """How big the study is: data, search budgets, training lengths and the number of imputations M."""

    name: str
    dataset: str
    trials: dict  # kind -> trials per study (the MLP kinds: per layer count)
    mlp_layers: tuple  # hidden-layer counts searched separately for MLPs (§3.5)
    epochs: dict  # kind -> most epochs of one training
    patience: dict  # "vae" / "mlp" / "cnn" -> early-stopping patience in epochs ("vae": every generative model)
    min_delta: dict  # the same parts -> the least gain that resets the patience (TrainConfig.min_delta)
    min_epochs: int  # epochs before early stopping may end a training (TrainConfig.min_epochs)
    batch_size: int  # images per gradient step
    imputations: dict  # "mlp" / "cnn" -> M, the imputations averaged by multiple imputation
    retrain: bool  # retrain the winner on train + validation (§3.5) or keep the winning trial
    beyond_epochs: dict  # model of the beyond stage (mivae.study.beyond) -> most epochs of its one training
    about: str


PRESETS = {
    "smoke": Preset(
        "smoke",
        "digits",
        trials={"vae": 2, "mlp": 2, "cnn": 1, "vae+mlp": 1, "vae+cnn": 1},
        mlp_layers=(2,),
        epochs={"vae": 30, "mlp": 30, "cnn": 15, "vae+mlp": 30, "vae+cnn": 15},
        patience=dict.fromkeys(PARTS, 5),
        min_delta=dict.fromkeys(PARTS, 0.0),
        min_epochs=5,
        batch_size=64,
        imputations={"mlp": 300, "cnn": 100},
        retrain=True,
        beyond_epochs={
            "mask-mlp": 30,
            "mask-cnn": 15,
            "incomplete-vae": 30,
            "incomplete-vae+mlp": 30,
            "imputed-mlp": 30,
        },
        about="scikit-learn's 8x8 digits, tiny searches: checks the whole pipeline in a few minutes",
    ),
    "quick": Preset(
        "quick",
        "mnist",
        trials={"vae": 6, "mlp": 3, "cnn": 1, "vae+mlp": 3, "vae+cnn": 1},
        mlp_layers=(2,),
        epochs={"vae": 200, "mlp": 100, "cnn": 50, "vae+mlp": 100, "vae+cnn": 50},
        patience={"vae": 15, "mlp": 10, "cnn": 4},
        min_delta={"vae": 0.1, "mlp": 0.0, "cnn": 0.0},
        min_epochs=10,
        batch_size=128,
        imputations={"mlp": 3000, "cnn": 50},
        retrain=False,
        beyond_epochs={
            "mask-mlp": 15,
            "mask-cnn": 3,
            "incomplete-vae": 15,
            "incomplete-vae+mlp": 10,
            "imputed-mlp": 12,
        },
        about="full MNIST; a scaled-down random search (6 VAE trials, 3 for each MLP, the default configuration of the "
        "CNN, which is the Keras example §3.3 describes), hopeless trials pruned on their validation curve, every "
        "model trained until early stopping ends it (at least 10 epochs; for VAEs patience 15, counting gains of "
        "more than 0.1 nats only, since their validation ELBO still falls slowly at small learning rates; 10 for "
        "MLPs, whose validation accuracy jumps by several points from epoch to epoch; 4 for CNNs); the winning "
        "trial kept (no retraining); M = 3000 for MLPs and 50 for CNNs",
    ),
    "thesis": Preset(
        "thesis",
        "mnist",
        trials=dict.fromkeys(SEARCHED, 100),
        mlp_layers=(2, 3, 4),
        epochs={"vae": 80, "mlp": 100, "cnn": 50, "vae+mlp": 100, "vae+cnn": 50},
        patience={"vae": 5, "mlp": 10, "cnn": 5},
        min_delta=dict.fromkeys(PARTS, 0.0),
        min_epochs=10,
        batch_size=128,
        imputations={"mlp": 3000, "cnn": 3000},
        retrain=True,
        beyond_epochs=dict.fromkeys(BEYOND, 50),
        about="the thesis' protocol: 100-trial searches, retraining on train + validation, M = 3000; "
        "days on 2 cores, meant for a fleet of workers sharing --storage",
    ),
}

# Bumped when evaluations report more or otherwise (2: predictions, validation accuracy and uncertainty; 3: health
# checks; 4: the paired z counts only the images exactly one of two classifiers gets right), so
# cached ones are redone.
EVALUATION_VERSION = 4


def setting_name(method, level):
    return f"{method}-{level:g}"


def key_of(spec):
    """The key of a unit: a short hash of the JSON of everything it depends on."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


class UnitRecord(NamedTuple):
    """A unit of the study as one invocation met it."""

    label: str
    seconds: float  # this invocation's time on it: a reused unit's is the time to find it
    reused: bool  # finished by an earlier run, read from the cache


class Study:
    """One reproduce run directory: runs each unit once, and reuses what earlier runs finished."""

    def __init__(
        self,
        preset,
        out,
        seed=0,
        data_dir=None,
        storage=None,
        limit=None,
        progress=True,
        settings=None,
        beyond_stage=True,
        device="auto",
    ):
        if preset not in PRESETS:
            raise MivaeError(f"unknown preset {preset!r}; known presets are {', '.join(PRESETS)}.")
        if seed < 0:
            raise MivaeError(f"the seed must be a whole number of at least 0; got {seed}.")
        self.preset, self.out, self.seed = PRESETS[preset], Path(out), seed
        self.data_dir, self.storage, self.limit = data_dir, storage, limit
        self.settings = list(SETTINGS.values()) if settings is None else list(settings)
        unknown = [pair for pair in self.settings if pair not in SETTINGS.values()]
        if unknown or not self.settings:
            raise MivaeError(
                f"the settings to run must be some of the thesis' six, {', '.join(SETTINGS)}; got "
                f"{unknown[0] if unknown else 'none'}."
            )
        self.beyond_stage = beyond_stage
        self.device = str(resolve_device(device))  # where every unit trains and is evaluated; in each unit's key
        identity = json.loads(json.dumps({"preset": dataclasses.asdict(self.preset), "seed": seed, "limit": limit}))
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MivaeError(f"cannot create the run directory {self.out}: {e.strerror or e}.") from None
        remove_stale_temporaries(self.out)  # left by a run killed mid-write; a live fleet worker's are kept
        existing = self.out / "study.json"
        with _locked(self.out / ".study.lock"):  # two workers starting at once: one creates it, the other checks it
            if existing.exists():
                earlier = readback.read_json(existing, STUDY_SHAPE)
                if _without_about(earlier["identity"]) != _without_about(identity):
                    raise MivaeError(
                        f"{self.out} holds a study with another preset, seed or limit; give another --out."
                    )
            else:
                write_json(
                    existing, {"identity": identity, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "clocked": True}
                )  # every invocation of it is in clock/
        # The share of the study done, in measured seconds, and the time left as `_progress` estimates it.
        self.bar = tqdm(
            total=1,
            desc="reproduce",
            disable=not progress,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} so far{postfix}",
        )
        self.done = []  # a UnitRecord of every unit, in order
        self.resumed = 0  # units that went on from a stopped invocation's part of their work (its checkpoints)
        self._problems = {}

    # -- the plan -------------------------------------------------------------------------

    def data(self, method, level, clean_train=False):
        return DataConfig(
            dataset=self.preset.dataset,
            method=method,
            level=level,
            seed=self.seed,
            clean_train=clean_train,
            limit=self.limit,
        )

    def train_config(self, kind, epochs=None):
        part = KINDS[kind].part
        part = part if part in PARTS else "vae"  # MIWAE and not-MIWAE: as the VAE
        return TrainConfig(
            epochs=epochs or self.preset.epochs[kind],
            patience=self.preset.patience[part],
            min_delta=self.preset.min_delta[part],
            min_epochs=self.preset.min_epochs,
            batch_size=self.preset.batch_size,
            seed=self.seed,
            device=self.device,
        )

    # -- units ----------------------------------------------------------------------------

    def _unit(self, label, spec, work):
        """Runs `work(directory)` unless the unit with this spec finished before; returns its output."""
        directory = self.out / "units" / f"{label}-{key_of(spec)}"
        begun = directory.exists()  # by an invocation before this one, or by another worker now
        directory.mkdir(parents=True, exist_ok=True)  # a unit's folder exists from its start; unit.json marks its end
        with self._claimed(directory / ".lock", label):
            start = time.monotonic()
            finished = (directory / "unit.json").exists()
            self.resumed += int(begun and not finished)
            result = work(directory, finished)
            seconds = time.monotonic() - start
            if finished:
                trained_in = readback.read_json(directory / "unit.json", UNIT_SHAPE)["seconds"]
            else:
                trained_in = round(seconds, 2)
                write_json(directory / "unit.json", {"label": label, "spec": spec, "seconds": trained_in})
        self.done.append(UnitRecord(label, seconds, finished))
        return result, key_of(spec), trained_in

    @contextlib.contextmanager
    def _claimed(self, lock, label):
        """Holds `lock` while the unit `label` runs, waiting first for another worker of this directory that holds
        it."""
        self.bar.set_description(f"reproduce: {label}")
        if self.storage is not None:  # a fleet shares the unit's trials through the storage
            yield
            return
        waiting = partial(self.bar.set_description, f"reproduce: waiting for another worker's {label}")
        with _locked(lock, waiting):
            self.bar.set_description(f"reproduce: {label}")
            yield

    def searched(self, kind, data, vae=None):
        """Returns (final Run, search.json content, key) of the §3.5 search for `kind` on `data`."""
        vae_run, vae_key = vae or (None, None)
        train = self.train_config(kind)
        layers = self.preset.mlp_layers if KINDS[kind].part == "mlp" else (None,)
        spec = {
            "kind": kind,
            "data": to_dict(data),
            "train": to_dict(train),
            "trials": self.preset.trials[kind],
            "layers": list(layers),
            "retrain": self.preset.retrain,
            "seed": self.seed,
            "vae": vae_key,
            "space": space_of(kind),
        }
        setting = "clean" if data.clean_train else setting_name(data.method, data.level)
        label = f"{kind}-{setting}"

        def work(directory, finished):
            if not finished:
                resume = self.storage is not None or (directory / "study.db").exists()
                trials = tqdm(
                    total=self.preset.trials[kind] * len(layers),
                    desc=f"  {label} trials",
                    unit="trial",
                    leave=False,
                    disable=self.bar.disable,
                )
                try:
                    search(
                        kind,
                        data,
                        self.preset.trials[kind],
                        directory,
                        train,
                        storage=self.storage,
                        study_name=f"{label}-{key_of(spec)}" if self.storage else None,
                        seed=self.seed,
                        resume=resume,
                        vae_run=vae_run,
                        layers=layers,
                        problem=self.problem(data),
                        retrain=self.preset.retrain,
                        on_trial=lambda study: trials.update(1),
                    )
                finally:
                    trials.close()
            return load_run(directory / "final", self.device), readback.read_json(
                directory / "search.json", SEARCH_SHAPE
            )

        (run, summary), key, seconds = self._unit(label, spec, work)
        return run, {**summary, "seconds": seconds}, key

    def trained(self, label, kind, data, config, epochs, vae=None):
        """Returns (Run, key) of one training with a fixed config (Table 3), early stopping on validation."""
        vae_run, vae_key = vae or (None, None)
        train = self.train_config(kind, epochs)
        spec = {"kind": kind, "data": to_dict(data), "model": to_dict(config), "train": to_dict(train), "vae": vae_key}

        def work(directory, finished):
            if not finished:
                save_run(train_model(kind, data, config, train, problem=self.problem(data), vae_run=vae_run), directory)
            return load_run(directory, self.device)

        run, key, _ = self._unit(label, spec, work)
        return run, key

    def evaluate(self, run, data, **options):
        """`evaluate_run` of `run` on the test set of `data`, with the setting's cached Problem, as JSON values."""
        return evaluate_run(run, problem=self.problem(data), data=data, **options).to_json()

    def evaluated(self, group, name, run_key, compute, extra=None, **spec):
        """Returns the evaluation results/<group>/<name>.json: compute() and `extra`, computed unless its key
        matches."""
        path = self.out / "results" / group / f"{name}.json"
        key = key_of({"run": run_key, "version": EVALUATION_VERSION, **spec})
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._claimed(path.parent / f".{name}.lock", f"evaluate {group}/{name}"):
            result = readback.read_json(path, RESULT_SHAPE) if path.exists() else {}
            if result.get("key") != key:
                start = time.monotonic()
                result = {"key": key, **compute(), **(extra or {})}
                result["seconds"] = round(time.monotonic() - start, 2)
                write_json(path, result)
        return result

    def problem(self, data):
        """The Problem of `data`, built once per setting (corrupting 70,000 images takes seconds)."""
        key = dataclasses.replace(data, clean_train=False)
        if key not in self._problems:
            self._problems.clear()  # one setting at a time: each holds the whole dataset
            self._problems[key] = make_problem(key, self.data_dir)
        return self._problems[key]


# What study.json and a unit's unit.json hold. The preset in a study's identity is checked field by field by the
# report, in today's terms (`current_identity`); resuming compares it whole with the preset asked for.
_INVOCATION = {
    "finished": str,
    "seconds": readback.NUMBER,
    "settings": [str],
    "beyond": bool,
    "units_run": readback.WHOLE,
    "units_reused": readback.WHOLE,
}
STUDY_SHAPE = {
    "identity": {
        "preset": readback.Map(readback.ANY),
        "seed": readback.WHOLE,
        "limit": readback.Either(None, readback.whole(1)),
    },
    "started": str,
    "clocked": readback.Optional(bool),
    "finished": readback.Optional(str),
    "machine": readback.Optional(readback.Map(readback.ANY)),
    "invocations": readback.Optional([_INVOCATION]),
    "units": readback.Optional([{"label": str, "seconds": readback.NUMBER, "reused": bool}]),
}
PRESET_SHAPE = {  # a Preset as a study's identity holds it, in today's terms (`current_identity`)
    "name": str,
    "dataset": str,
    "trials": readback.Map(readback.whole(1)),
    "mlp_layers": [readback.whole(1)],
    "epochs": readback.Map(readback.whole(1)),
    "patience": readback.Map(readback.whole(1)),
    "min_delta": readback.Map(readback.FINITE),
    "min_epochs": readback.WHOLE,
    "batch_size": readback.whole(1),
    "imputations": {"mlp": readback.whole(1), "cnn": readback.whole(1)},
    "retrain": bool,
    "beyond_epochs": readback.Map(readback.whole(1)),
    "about": str,
}
UNIT_SHAPE = {"label": str, "spec": readback.Map(readback.ANY), "seconds": readback.NUMBER}
RESULT_SHAPE = readback.Map(readback.ANY)  # an evaluation's fields are checked as it is read (images.results)


@contextlib.contextmanager
def _locked(path, on_wait=None, wait=True):
    """Holds an exclusive lock on the file `path` (created if need be) and yields True. If another holds it: calls
    on_wait() and waits for it, or with wait=False yields False at once, holding nothing."""
    handle = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # an empty lock file: nothing is ever written to it
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


class Clock:
    """Records when one invocation of a study ran, in RUN_DIR/clock/<host>-<pid>-<start>.json: its start, its latest
    moment alive (written every `beat` seconds from a background thread, so a killed invocation still counts) and
    whether it ran to its end."""

    def __init__(self, folder, settings, beat=30.0):
        started = time.time()
        self.path = Path(folder) / f"{socket.gethostname().replace('.', '_')}-{os.getpid()}-{started:.3f}.json"
        self.record = {
            "started": started,
            "last": started,
            "settings": settings,
            "threads": torch.get_num_threads(),
            "finished": False,
        }
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._beat, args=(beat,), daemon=True)
        self._thread.start()

    def _write(self):
        self.record["last"] = time.time()
        write_json(self.path, self.record)

    def _beat(self, beat):
        while not self._stop.wait(beat):
            with contextlib.suppress(OSError):  # a record of time, not a result: a missed beat is not an error
                self._write()

    def stop(self, finished):
        """Stops the beat and writes the last moment; `finished`: the invocation ran to its end."""
        self._stop.set()
        self._thread.join()
        self.record["finished"] = finished
        with contextlib.suppress(OSError):  # never the study's failure, nor in place of the one that stopped it
            self._write()


def wall_time(run_dir):
    """Returns the study's wall time from RUN_DIR/clock/ as {"seconds", "invocations", "stopped", "workers",
    "threads"}: the union of the invocations' spans (workers running at once count once), how many invocations there
    were, how many ended before their end (killed, interrupted or still running), the most that ran at once, and the
    CPU thread counts they ran on."""
    spans, threads = [], set()
    for path in sorted((Path(run_dir) / "clock").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            spans.append((float(record["started"]), float(record["last"]), bool(record["finished"])))
            if isinstance(record.get("threads"), int):
                threads.add(record["threads"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a clock file is a record, not a result: a damaged one is left out
    seconds, end, workers = 0.0, -math.inf, 0
    for start, last, _ in sorted(spans):
        seconds += max(0.0, last - max(start, end))
        end = max(end, last)
        workers = max(workers, sum(s <= start < e for s, e, _ in spans))
    return {
        "seconds": seconds,
        "invocations": len(spans),
        "stopped": sum(not f for *_, f in spans),
        "workers": workers,
        "threads": sorted(threads),
    }


def current_identity(identity):
    """A study's identity (study.json's "identity") in today's terms. Studies begun before the preset named M
    `imputations` wrote it as `samples`, and held no `beyond_epochs` (they came from the named preset)."""
    if not isinstance(identity, dict) or not isinstance(identity.get("preset"), dict):
        return identity
    preset = dict(identity["preset"])
    if "samples" in preset and "imputations" not in preset:
        preset["imputations"] = preset.pop("samples")
    if "beyond_epochs" not in preset and preset.get("name") in PRESETS:
        preset["beyond_epochs"] = dict(PRESETS[preset["name"]].beyond_epochs)
    return {**identity, "preset": preset}


def _without_about(identity):
    """A study's identity without the preset's description, which may be reworded without changing any result."""
    identity = current_identity(identity)
    if not isinstance(identity, dict) or not isinstance(identity.get("preset"), dict):
        return identity
    return {**identity, "preset": {k: v for k, v in identity["preset"].items() if k != "about"}}


def _imputations_kept(m):
    return tuple(sorted({k for k in (1, 10, 100, 1000) if k <= m} | {m}))


def parse_settings(text):
    """Returns the (method, level) pairs named by `text` ("rp70,vl90"; None or "all": all six), in the study's order."""
    if text is None or text == "all":
        return list(SETTINGS.values())
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise MivaeError(
            f"unknown setting {(unknown or [text])[0]!r}; known settings are {', '.join(SETTINGS)} "
            f"(comma-separated), or all."
        )
    return [pair for name, pair in SETTINGS.items() if name in names]


def reproduce(
    preset,
    out,
    seed=0,
    data_dir=None,
    storage=None,
    limit=None,
    progress=True,
    settings=None,
    beyond_stage=True,
    device="auto",
):
    """Runs (or resumes) the study of §4 in `out`; returns the `Study` (its `done` lists every unit).

    settings: the (method, level) pairs to run (`parse_settings`), by default all six; Table 3 runs with
    Random Pixels 70 %, Figure 8 with Random Pixels 50 %. beyond_stage: also run the beyond-the-thesis stage.
    device: where the models train and are evaluated (`hardware.resolve_device`).
    """
    started = time.monotonic()
    study = Study(preset, out, seed, data_dir, storage, limit, progress, settings, beyond_stage, device)
    clock = Clock(study.out / "clock", [setting_name(m, lv) for m, lv in study.settings])
    try:
        _run_study(study)
    except BaseException:
        clock.stop(finished=False)
        raise
    clock.stop(finished=True)
    with _locked(study.out / ".study.lock"):
        _record_invocation(study, started)
    return study


@dataclass
class _Task:
    """A step of the study that one worker runs whole: a search with its evaluations, or evaluations alone."""

    name: str
    needs: tuple  # the names of the tasks whose results it uses
    run: object  # run(): does the work, or reuses what a worker before it did, and records its results
    kind: str  # tasks of one kind cost about the same: the time left is estimated from those already timed


def _run_tasks(study, tasks):
    """Runs `tasks` (listed after the tasks they need), each after the tasks it needs.

    A worker that finds a ready task held by another worker of this run directory puts it off and takes the
    next ready one, so workers given the same settings share the work instead of waiting on each other; it
    waits only when every ready task is held. A task another worker finished is run too: it reuses the
    cached units and evaluations, which gives this worker the results later tasks need. The worker that does
    a task's work records how long it took (RUN_DIR/tasks/<task>.json), for the time left (`_progress`).
    """
    folder = study.out / "tasks"
    folder.mkdir(exist_ok=True)
    _progress(study, folder, tasks)
    if study.storage is not None:  # a fleet: every worker has its own run directory and shares the searches' trials
        for task in tasks:
            _timed(study, folder, task, tasks)
        return
    done, pending = set(), list(tasks)
    while pending:
        ready = [t for t in pending if set(t.needs) <= done]
        for task in ready:
            with _locked(folder / f".{task.name}.lock", wait=False) as ours:
                if ours:
                    _timed(study, folder, task, tasks)
                    break
        else:  # every ready task is another worker's: wait for the first, then reuse its results
            task = ready[0]
            with _locked(
                folder / f".{task.name}.lock",
                partial(study.bar.set_description, f"reproduce: waiting for another worker's {task.name}"),
            ):
                _timed(study, folder, task, tasks)
        done.add(task.name)
        pending.remove(task)


def _timed(study, folder, task, tasks):
    """Runs `task`; records its seconds unless a worker before this one did its work (or some of it: a unit reused
    from a run before the records, or one that went on from a stopped invocation's checkpoints, would make the
    task look cheap)."""
    record = folder / f"{task.name}.json"
    timed_before = _task_record(record) is not None
    start, units_before, resumed_before = time.monotonic(), len(study.done), study.resumed
    task.run()
    reused = any(u.reused for u in study.done[units_before:]) or study.resumed > resumed_before
    if not timed_before and not reused:
        write_json(record, {"kind": task.kind, "seconds": round(time.monotonic() - start, 2)})
    _progress(study, folder, tasks)


def _task_record(path):
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("seconds"), (int, float)) else None
    except (OSError, ValueError, AttributeError):
        return None  # not timed yet, or a damaged record: the task counts as left


def time_left(folder, tasks, workers=1):
    """Returns (seconds done, seconds left, kinds left untimed) of the study's `tasks` from their records in
    `folder` (RUN_DIR/tasks/).

    A task left is estimated at the mean seconds of the finished tasks of its kind on this run directory:
    every setting has one task of each kind, so after the first setting those are all measured. Kinds that
    no finished task has timed yet are not counted, but named. The seconds left are shared among `workers`.
    """
    records = {t.name: _task_record(folder / f"{t.name}.json") for t in tasks}
    timed = {}
    for task in tasks:
        if records[task.name] is not None:
            timed.setdefault(task.kind, []).append(records[task.name]["seconds"])
    left = [t for t in tasks if records[t.name] is None]
    seconds = sum(sum(timed[t.kind]) / len(timed[t.kind]) for t in left if t.kind in timed)
    untimed = sorted({t.kind for t in left if t.kind not in timed})
    done = sum(r["seconds"] for r in records.values() if r is not None)
    return done, seconds / max(1, workers), untimed


def _progress(study, folder, tasks):
    """Shows the share of the study done and the time left, from the measured seconds of the tasks done."""
    if study.bar.disable:
        return
    done, left, untimed = time_left(folder, tasks, _workers_running(study.out))
    study.bar.total, study.bar.n = max(1.0, done + left), done
    text = f"about {_hours_minutes(left)} left" if done > 0 else "time left: known once a task is done"
    if untimed and done > 0:
        text += f", besides {', '.join(untimed)}, not timed yet"
    study.bar.set_postfix_str(text, refresh=True)


def _workers_running(run_dir, now=None):
    """The invocations of the study whose clock beat within the last two minutes and that have not ended."""
    now = time.time() if now is None else now
    count = 0
    for path in (Path(run_dir) / "clock").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(path.read_text())
            count += not record["finished"] and now - float(record["last"]) < 120
    return count


def _hours_minutes(seconds):
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _run_study(study):
    """The study's tasks in their order: each setting's searches and evaluations, Table 3, Tables 6 and 7, and the
    beyond-the-thesis stage."""
    _run_tasks(study, _tasks(study))
    study.bar.close()


def _tasks(study):
    """The `_Task`s of the study, in the order one worker runs them."""
    seed, p = study.seed, study.preset
    chosen = [setting_name(m, lv) for m, lv in study.settings]
    vaes, vae_mlps, cleans = {}, {}, {}  # what tasks hand on to the tasks that need them
    tasks = []

    def vae_task(setting, data):
        vae, summary, key = study.searched("vae", data)
        study.evaluated(setting, "vae", key, partial(study.evaluate, vae, data), extra={"search": summary})
        vaes[setting] = (vae, key)

    def classifier_task(setting, data, classifier):
        run, summary, key = study.searched(classifier, data)
        study.evaluated(setting, classifier, key, partial(study.evaluate, run, data), extra={"search": summary})

    def type2_task(setting, data, classifier):
        kind = f"vae+{classifier}"
        run, summary, key = study.searched(kind, data, vae=vaes[setting])
        m = p.imputations[classifier]
        study.evaluated(
            setting,
            kind,
            key,
            partial(study.evaluate, run, data, imputations=_imputations_kept(m), seed=seed),
            extra={"search": summary},
            samples=m,  # the key's name for M since before `imputations`: kept, so cached evaluations stay valid
            seed=seed,
        )
        if classifier == "mlp":
            vae_mlps[setting] = (run, key)

    def figure8_task(setting, data):
        hard_run, hard_key = vae_mlps[setting]
        study.evaluated(
            "figures", "figure8", hard_key, partial(hard_image, hard_run, study.problem(data), seed), seed=seed
        )

    # Tables 6 and 7: classifiers trained (and selected) on clean images, tested on every corruption.
    clean = study.data(METHODS[0], LEVELS[0], clean_train=True)

    def clean_task(kind):
        cleans[kind] = study.searched(kind, clean)

    for number, (method, level) in enumerate(study.settings):
        setting, data = setting_name(method, level), study.data(method, level)
        tasks.append(_Task(f"vae-{setting}", (), partial(vae_task, setting, data), "vae"))
        # Each classifier beside its Type 2 counterpart, the cheaper MLP pair first.
        for classifier in ("mlp", "cnn"):
            tasks.append(
                _Task(f"{classifier}-{setting}", (), partial(classifier_task, setting, data, classifier), classifier)
            )
            tasks.append(
                _Task(
                    f"vae+{classifier}-{setting}",
                    (f"vae-{setting}",),
                    partial(type2_task, setting, data, classifier),
                    f"vae+{classifier}",
                )
            )
        if setting == "random-pixels-0.5":
            tasks.append(_Task("figure8", (f"vae+mlp-{setting}",), partial(figure8_task, setting, data), "figure8"))
        if number == 0:  # needed only at the end, but listed early: a long task last would leave the other worker idle
            tasks += [_Task(f"clean-{kind}", (), partial(clean_task, kind), f"clean-{kind}") for kind in ("mlp", "cnn")]
    tasks.append(
        _Task(
            "examples",
            (),
            lambda: study.evaluated(
                "figures", "examples", None, partial(examples, study), dataset=p.dataset, seed=seed
            ),
            "examples",
        )
    )
    if "random-pixels-0.7" in chosen:
        tasks.append(
            _Task(
                "table3",
                ("vae-random-pixels-0.7", "vae+mlp-random-pixels-0.7"),
                partial(_table3, study, vaes, vae_mlps),
                "table3",
            )
        )

    def clean_evaluations(setting, data):
        vae, vae_key = vaes[setting]
        for kind, (run, summary, key) in cleans.items():
            study.evaluated(
                setting,
                f"clean-{kind}",
                key,
                partial(study.evaluate, run, data, vae_run=vae),
                extra={"search": summary},
                vae=vae_key,
            )

    for method, level in study.settings:
        setting = setting_name(method, level)
        tasks.append(
            _Task(
                f"clean-on-{setting}",
                (f"vae-{setting}", "clean-mlp", "clean-cnn"),
                partial(clean_evaluations, setting, study.data(method, level)),
                "clean-on",
            )
        )

    # Beyond the thesis: mask-aware models, VAEs for incomplete data, importance weights, baselines.
    if study.beyond_stage:
        for method, level in study.settings:
            setting = setting_name(method, level)
            tasks.append(
                _Task(
                    f"beyond-{setting}",
                    ("clean-mlp", "clean-cnn"),
                    partial(beyond.run_setting, study, setting, study.data(method, level), cleans),
                    "beyond",
                )
            )
    return tasks


def _table3(study, vaes, vae_mlps):
    """Table 3: the selected VAE at Random Pixels 70 % and two weaker ones, each with the selected classifier config."""
    p, data = study.preset, study.data("random-pixels", 0.7)
    type2_rp70 = vae_mlps["random-pixels-0.7"][0]
    table3 = [
        {
            "vae": "selected",
            "config": to_dict(type2_rp70.vae_config),
            "test_negative_elbo": vaes["random-pixels-0.7"][0].metrics["test_negative_elbo"],
            "test_accuracy": type2_rp70.metrics["test_accuracy"],
        }
    ]  # its health: Table 1's (report.table3)
    for name, config in WEAK_VAES.items():
        vae, vae_key = study.trained(f"table3-{name}-vae", "vae", data, config, epochs=1)
        run, key = study.trained(
            f"table3-{name}-vae+mlp",
            "vae+mlp",
            data,
            type2_rp70.model_config,
            epochs=p.epochs["vae+mlp"],
            vae=(vae, vae_key),
        )
        table3.append(
            {
                "vae": name,
                "config": to_dict(config),
                "test_negative_elbo": vae.metrics["test_negative_elbo"],
                "test_accuracy": run.metrics["test_accuracy"],
                "health": run.metrics.get("health"),
            }
        )
    write_json(study.out / "results" / "table3.json", {"rows": table3})


def _record_invocation(study, started):
    """Adds this invocation, with its units, to study.json."""
    chosen, beyond_stage = study.settings, study.beyond_stage
    finished = readback.read_json(study.out / "study.json", STUDY_SHAPE)
    machine = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": study.device,
        "precision": str(resolve_precision("auto", study.device)).removeprefix("torch."),
    }
    invocation = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.monotonic() - started, 1),
        "settings": [setting_name(m, lv) for m, lv in chosen],
        "beyond": beyond_stage,
        "units_run": sum(not u.reused for u in study.done),
        "units_reused": sum(u.reused for u in study.done),
    }
    write_json(
        study.out / "study.json",
        {
            **finished,
            "finished": invocation["finished"],
            "machine": machine,
            "invocations": finished.get("invocations", []) + [invocation],
            "units": [{"label": u.label, "seconds": round(u.seconds, 2), "reused": u.reused} for u in study.done],
        },
    )


def examples(study):
    """Figures 4, 9 and 13: the first test image, clean and in each of the six settings, whichever settings run
    (a later run with other --settings reuses it); and the test labels, the same in every setting, for paired tests."""
    out = {"index": 0}
    for method, level in SETTINGS.values():
        test = study.problem(study.data(method, level)).test
        out["clean"], out[setting_name(method, level)] = test.clean[0].tolist(), test.x[0].tolist()
    out["test_labels"] = test.y.tolist()
    return out


@torch.inference_mode()
def hard_image(run, problem, seed, candidates=500, n=16):
    """Figure 8: the test image whose n imputations the VAE+MLP classifies most diversely, with them."""
    generator = torch.Generator().manual_seed(seed)
    model = run.model.eval()
    device = next(model.parameters()).device
    x = problem.test.x[:candidates].to(device)
    mu, logvar = model.vae.encode(x)
    eps = torch.randn((len(x), n, mu.shape[1]), generator=generator).to(device)  # the same draws on every device
    z = reparameterize(mu[:, None], logvar[:, None], eps=eps)  # (N, n, L)
    images = model.vae.decode(z.flatten(0, 1))
    predicted = model.classifier(images).argmax(1).view(len(x), n)
    counts = torch.stack([torch.bincount(row, minlength=run.n_classes) for row in predicted]).double()
    p = counts / n
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    i = int(entropy.argmax())
    return {
        "index": i,
        "label": int(problem.test.y[i]),
        "predicted": predicted[i].tolist(),
        "clean": problem.test.clean[i].tolist(),
        "corrupted": problem.test.x[i].tolist(),
        "imputations": images.view(len(x), n, *x.shape[1:])[i].tolist(),
    }

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
import torch

from mivae.config import DataConfig, TrainConfig
from mivae.errors import MivaeError
from mivae.images.problem import make_problem
from mivae.images.runs import Run
from mivae.study import search
from mivae.training import History, TrainingDiverged

DATA = DataConfig(dataset="digits", level=0.3)


def _seeded_study(seed, first=None):
    """An in-memory study drawn by TrialSeededSampler, which records slots in the study's storage."""
    storage = optuna.storages.InMemoryStorage()
    return optuna.create_study(storage=storage, sampler=search.TrialSeededSampler(seed, first, storage=storage))


@pytest.fixture(scope="module")
def problem():
    return make_problem(DATA)


def test_draws_depend_only_on_seed_and_budget_slot():
    def draws(seed, numbers):
        study = _seeded_study(seed)
        out = {}
        for _ in range(max(numbers) + 1):
            trial = study.ask()
            out[trial.number] = search.suggest_config("vae", trial)
            study.tell(trial, 0.0)
        return [out[n] for n in numbers]

    assert draws(3, [0, 1, 2]) == draws(3, [0, 1, 2])
    assert draws(3, [0])[0] != draws(4, [0])[0]
    first, second, third = draws(3, [0, 1, 2])
    assert first != second and second != third and first != third
    for config in (first, second, third):  # inside the documented space
        assert 1 <= len(config.hidden) <= 3 and 128 <= config.hidden[0] <= 1024
        assert 2 <= config.latent <= 64 and 1e-4 <= config.lr <= 3e-3 and 1e-8 <= config.l2 <= 1e-3


def test_a_trials_draw_does_not_depend_on_what_earlier_trials_drew():
    def fourth_vae_draw(earlier_kind):
        study = _seeded_study(5)
        for _ in range(3):
            trial = study.ask()
            search.suggest_config(earlier_kind, trial)
            study.tell(trial, 0.0)
        return search.suggest_config("vae", study.ask())

    # A stream-based sampler (Optuna's RandomSampler) would differ here: the earlier trials drew other parameters.
    assert fourth_vae_draw("cnn") == fourth_vae_draw("mlp")


def test_a_trial_run_again_after_a_kill_or_a_dead_worker_draws_what_the_lost_one_drew():
    def uninterrupted():
        study = _seeded_study(7)
        configs = []
        for _ in range(3):
            trial = study.ask()
            configs.append(search.suggest_config("vae", trial))
            study.tell(trial, 0.0)
        return configs

    expected = uninterrupted()
    # A kill during the second trial: it is marked interrupted when the study resumes, and the next trial replaces it.
    study = _seeded_study(7)
    first = study.ask()
    assert search.suggest_config("vae", first) == expected[0]
    study.tell(first, 0.0)
    lost = study.ask()
    assert search.suggest_config("vae", lost) == expected[1]
    search.interrupted_running_trials(study)
    again = study.ask()
    assert search.suggest_config("vae", again) == expected[1] and again.number == 2
    study.tell(again, 0.0)
    last = study.ask()
    assert search.suggest_config("vae", last) == expected[2]
    # In a fleet: trials 0 and 1 run at once and the worker of trial 0 dies; its replacement takes slot 0, not 1.
    fleet = _seeded_study(7)
    dying, running = fleet.ask(), fleet.ask()
    search.suggest_config("vae", dying)
    assert search.suggest_config("vae", running) == expected[1]
    storage, trial_id = search._storage_and_id(fleet, dying)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)  # as fail_stale_trials does
    replacement = fleet.ask()
    assert search.suggest_config("vae", replacement) == expected[0]


def test_mlp_searches_draw_each_layer_and_the_space_is_shown():
    trial = optuna.trial.FixedTrial({"nodes_1": 100, "nodes_2": 200, "nodes_3": 300, "l2": 1e-5, "lr": 0.1})
    config = search.suggest_config("mlp", trial, layers=3)
    assert config.hidden == (100, 200, 300) and config.lr == 0.1 and config.l2 == 1e-5
    text = search.describe_spaces()
    assert "latent" in text and "dropout_conv" in text and "2, 3, 4 layers" in text
    assert "lr             0.01 to 1 (log scale)  - AdaDelta learning rate" in text


HEALTHY = {"ok": True, "reason": "a stand-in", "measured": {}}


def _fake_train(values, diverge=()):
    """A stand-in for train_model: trial i scores values[i]; calls are recorded."""
    calls = []

    def train_model(kind, data, config, train, problem=None, vae_run=None, validate=True, **kw):
        calls.append((config, train.epochs, validate, len(problem.train)))

        def run(history, metrics):
            return Run(kind=kind, data=data, model_config=config, train=train, model=torch.nn.Linear(1, 1),
                       image_shape=(8, 8), n_classes=10, history=history, metrics=metrics)  # fmt: skip

        if not validate:
            return run(History(best_epoch=train.epochs), {"test_accuracy": 0.5})
        i = len([c for c in calls if c[2]]) - 1
        if i in diverge:
            raise TrainingDiverged("training diverged: the loss went from 2.3 to nan at step 1 of epoch 2")
        return run(
            History(best_epoch=i + 1), {"val_accuracy": values[i], "val_negative_elbo": values[i], "health": HEALTHY}
        )

    return train_model, calls


def test_selection_retrains_the_best_validation_score_on_train_and_validation(tmp_path, problem, monkeypatch):
    fake, calls = _fake_train([0.5, 0.9, 0.7, 0.6])
    monkeypatch.setattr(search, "train_model", fake)
    result = search.search("mlp", DATA, 4, tmp_path, TrainConfig(epochs=30), problem=problem)
    assert result.best_value == 0.9 and result.best_epoch == 2
    searched, final = calls[:4], calls[4]
    assert final[0] == searched[1][0]  # the configuration of trial 1
    assert final[1] == 2 and final[2] is False  # its recorded epochs, no early stopping
    assert final[3] == len(problem.train) + len(problem.val)  # on train + validation
    assert all(c[3] == len(problem.train) and c[1] == 30 for c in searched)
    assert (tmp_path / "search.json").exists() and (tmp_path / "final" / "config.json").exists()


def test_vaes_are_selected_by_the_lowest_validation_negative_elbo(tmp_path, problem, monkeypatch):
    fake, calls = _fake_train([150.0, 120.0, 180.0])
    monkeypatch.setattr(search, "train_model", fake)
    result = search.search("vae", DATA, 3, tmp_path, TrainConfig(), problem=problem)
    assert result.best_value == 120.0 and calls[3][0] == calls[1][0]


def test_mlp_architectures_are_searched_apart_and_the_best_of_all_is_retrained(tmp_path, problem, monkeypatch):
    fake, calls = _fake_train([0.5, 0.6, 0.95, 0.7])  # two trials with 2 layers, then two with 3
    monkeypatch.setattr(search, "train_model", fake)
    result = search.search("mlp", DATA, 2, tmp_path, TrainConfig(), problem=problem, layers=(2, 3))
    assert result.best_value == 0.95
    assert [len(c[0].hidden) for c in calls] == [2, 2, 3, 3, 3]  # the final retraining: the 3-layer winner
    assert calls[4][0] == calls[2][0]
    summary = json.loads((tmp_path / "search.json").read_text())["studies"]
    assert summary == {"mlp2-digits-random-pixels-0.3-seed0": 0.6, "mlp3-digits-random-pixels-0.3-seed0": 0.95}


def test_resuming_with_other_settings_is_refused(tmp_path, problem, monkeypatch):
    fake, _ = _fake_train([0.5, 0.6, 0.7, 0.8])
    monkeypatch.setattr(search, "train_model", fake)
    search.search("mlp", DATA, 1, tmp_path, TrainConfig(epochs=10), problem=problem)
    with pytest.raises(MivaeError, match="was run with other settings"):
        search.search("mlp", DATA, 2, tmp_path, TrainConfig(epochs=20), problem=problem, resume=True)


def test_a_study_that_holds_each_setting_as_its_own_attribute_is_still_checked(tmp_path, problem, monkeypatch):
    fake, _ = _fake_train([0.5, 0.6, 0.7, 0.8])
    monkeypatch.setattr(search, "train_model", fake)
    settings = search._settings("mlp", 2, DATA, TrainConfig(epochs=10))
    study = optuna.create_study(storage=search.default_storage(tmp_path), study_name="old", direction="maximize")
    for key, value in json.loads(json.dumps(settings)).items():  # as earlier versions recorded them
        study.set_user_attr(key, value)
    result = search.search(
        "mlp", DATA, 1, tmp_path, TrainConfig(epochs=10), problem=problem, study_name="old", resume=True
    )
    assert result.best_value == 0.5
    with pytest.raises(MivaeError, match="was run with other settings"):
        search.search("mlp", DATA, 2, tmp_path, TrainConfig(epochs=20), problem=problem, study_name="old", resume=True)


def test_type_2_searches_need_a_vae_retrained_on_train_and_validation(tmp_path, problem):
    early_stopped = Run(
        "vae",
        DATA,
        None,
        TrainConfig(),
        torch.nn.Linear(1, 1),
        (8, 8),
        10,
        None,
        History(val_score=[100.0], best_epoch=1),
    )
    with pytest.raises(MivaeError, match="needs the selected VAE retrained on train \\+ validation"):
        search.search("vae+mlp", DATA, 1, tmp_path, TrainConfig(), problem=problem, vae_run=early_stopped)


def test_a_diverging_trial_is_recorded_and_the_search_goes_on(tmp_path, problem, monkeypatch):
    fake, _ = _fake_train([0.5, 0.0, 0.7], diverge={1})
    monkeypatch.setattr(search, "train_model", fake)
    result = search.search("mlp", DATA, 3, tmp_path, TrainConfig(), problem=problem)
    assert result.best_value == 0.7
    trials = optuna.load_study(
        study_name="mlp2-digits-random-pixels-0.3-seed0", storage=search.default_storage(tmp_path)
    ).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[1].user_attrs["failure"] == "training diverged: the loss went from 2.3 to nan at step 1 of epoch 2"


def test_a_search_where_every_trial_fails_is_a_clear_error(tmp_path, problem, monkeypatch):
    fake, _ = _fake_train([0, 0], diverge={0, 1})
    monkeypatch.setattr(search, "train_model", fake)
    with pytest.raises(
        MivaeError, match="every trial of the search failed \\(training diverged: the loss went from 2.3 to nan"
    ):
        search.search("mlp", DATA, 2, tmp_path, TrainConfig(), problem=problem)


def _mivae(*args):
    return [
        sys.executable,
        "-m",
        "mivae",
        "search",
        "mlp",
        "--layers",
        "2",
        "--dataset",
        "digits",
        "--level",
        "0.3",
        "--epochs",
        "3",
        "--threads",
        "1",
        *args,
    ]


def _complete(storage, name):
    """The finished trials' values, read without writing: loading the database with Optuna while the search is still
    creating its tables would race it to create them (a UNIQUE constraint failure)."""
    database = storage.removeprefix("sqlite:///")
    query = (
        "SELECT t.number, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "JOIN trial_values v ON v.trial_id = t.trial_id WHERE s.study_name = ? AND t.state = 'COMPLETE'"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
            return dict(db.execute(query, (name,)).fetchall())
    except sqlite3.Error:  # the database exists before its tables do, or it is busy
        return {}


def _spent(storage, name):
    """How many finished trials spent the budget (complete, pruned, or failed with a recorded reason); read once no
    process works on the study."""
    study = optuna.load_study(study_name=name, storage=storage)
    return sum(1 for t in study.trials if t.state.is_finished() and search.spends_budget(t))


def test_a_killed_search_resumes_without_losing_or_rerunning_trials(tmp_path):
    storage, name = search.default_storage(tmp_path), "mlp2-digits-random-pixels-0.3-seed0"
    worker = subprocess.Popen(
        _mivae("--trials", "8", "--out", str(tmp_path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    before = {}
    while time.time() < deadline and worker.poll() is None:
        time.sleep(0.2)
        if (tmp_path / "study.db").exists():
            before = _complete(storage, name)
            if len(before) >= 2:
                break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = _complete(storage, name)
    assert 2 <= len(before) < 8, "the worker was not killed mid-search"
    result = subprocess.run(_mivae("--trials", "8", "--out", str(tmp_path), "--resume"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    after = _complete(storage, name)
    assert _spent(storage, name) == 8  # the total, not 8 more (pruned trials count)
    assert all(after[n] == v for n, v in before.items())  # finished trials kept as they were


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on loopback in a temporary data directory; skipped, with the reason, if it cannot
    start."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (the CI script installs Debian's postgresql package)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    bin_dir = bins[-1]
    data = tempfile.mkdtemp(prefix="mivae-pg-")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    init = subprocess.run(
        [*as_user, f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"], capture_output=True, text=True
    )
    if init.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run(
        [
            *as_user,
            f"{bin_dir}/pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            f"{data}/log",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {data}",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {start.stderr.strip()[-300:]}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study_in_postgresql(postgres, tmp_path):
    args = [
        "--trials",
        "8",
        "--epochs",
        "10",
        "--storage",
        postgres,
        "--study",
        "fleet",
        "--resume",
    ]  # trials long enough to overlap
    workers = [
        subprocess.Popen(
            _mivae(*args, "--out", str(tmp_path / f"w{i}")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    study = optuna.load_study(study_name="fleet", storage=postgres)
    # Finished trials, pruned or failed ones (an unhealthy model) included, as they spend the budget too.
    complete = [t for t in study.trials if t.state.is_finished() and search.spends_budget(t)]
    assert len(complete) == 8  # exactly the budget
    assert sorted(t.number for t in complete) == list(range(8))
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 8  # no configuration twice
    assert {len(t.params) for t in complete} == {4}  # two layers' nodes, l2 and lr
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    # Each worker waited for the whole study, so both retrained the same winner.
    results = [json.loads((tmp_path / f"w{i}" / "search.json").read_text()) for i in range(2)]
    assert results[0]["best_trial"] == results[1]["best_trial"] == study.best_trial.number


def test_only_trials_that_ran_their_course_spend_the_budget():
    study = optuna.create_study()
    states = []
    for state, attrs in [
        ("COMPLETE", {}),
        ("FAIL", {}),
        ("PRUNED", {"failure": "diverged"}),
        ("FAIL", {"interrupted": True}),
        ("PRUNED", {"over_budget": True}),
    ]:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 1.0 if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
        states.append(state)
    spent = [search.spends_budget(t) for t in study.trials]
    # A worker that died (FAIL without a recorded failure), an interrupted trial and an over-budget one give their
    # slot back.
    assert spent == [True, False, True, False, False]
    last = study.ask()
    assert search._budget_slot(study, last) == 2


def test_a_trial_lost_to_its_worker_is_told_from_an_unhealthy_one():
    outcome = search.trial_outcome
    assert outcome("FAIL", "the model failed its health check: KL 0.0 nats") == "failed"
    assert outcome("FAIL", None, interrupted=True) == "lost"  # marked on resume
    assert outcome("FAIL") == "lost"  # died with its worker: no failure recorded
    assert outcome("PRUNED", "training diverged") == "pruned"
    assert outcome("COMPLETE") == "complete" and outcome("RUNNING") == "running"


def test_ctrl_c_stops_a_search_cleanly_and_resume_completes_it(tmp_path):
    storage, name = search.default_storage(tmp_path), "mlp2-digits-random-pixels-0.3-seed0"
    worker = subprocess.Popen(
        _mivae("--trials", "8", "--epochs", "20", "--out", str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(_complete(storage, name)) < 1:
        time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130 and err.strip().endswith("mivae: interrupted.")
    assert "Traceback" not in err and "failed with" not in err  # the stop is the one line above, not Optuna's log
    study = optuna.load_study(study_name=name, storage=storage)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]  # nothing left hanging
    assert 1 <= len(_complete(storage, name)) < 8
    result = subprocess.run(
        _mivae("--trials", "8", "--epochs", "20", "--out", str(tmp_path), "--resume"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert _spent(storage, name) == 8


def test_without_retraining_the_winning_trial_itself_is_the_final_run(tmp_path, problem):
    from mivae.images.runs import load_run

    result = search.search("mlp", DATA, 2, tmp_path, TrainConfig(epochs=3, patience=2), problem=problem, retrain=False)
    summary = json.loads((tmp_path / "search.json").read_text())
    kept = tmp_path / "trials" / summary["study"]
    assert sorted(p.name for p in kept.iterdir()) == ["0", "1"]  # every trial's run is kept
    best, final = load_run(kept / str(summary["best_trial"])), load_run(result.run_dir)
    assert summary["retrained"] is False and final.metrics == best.metrics
    assert final.metrics["val_accuracy"] == result.best_value  # trained on train only, validated, never retrained
    for a, b in zip(best.model.state_dict().values(), final.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_first_trial_of_every_study_runs_the_default_configuration(tmp_path, problem, monkeypatch):
    from mivae.config import MLPConfig, VAEConfig

    fake, calls = _fake_train([0.5, 0.6, 0.7, 0.8, 0.9, 0.4])
    monkeypatch.setattr(search, "train_model", fake)
    search.search("mlp", DATA, 3, tmp_path, TrainConfig(), problem=problem, layers=(2, 3))
    assert calls[0][0] == MLPConfig() and calls[3][0] == MLPConfig(hidden=(512, 512, 512))
    assert calls[1][0] != MLPConfig() and calls[4][0] != calls[3][0]  # then random draws
    vae = search.suggest_config("vae", optuna.trial.FixedTrial(search.default_params("vae")))
    assert vae == VAEConfig(l2=1e-8)  # the space's floor stands in for the default L2 of 0


def test_a_first_trial_lost_to_a_crash_is_run_again_with_the_defaults():
    first = search.default_params("cnn")
    study = _seeded_study(0, first)
    lost = study.ask()
    assert search.suggest_config("cnn", lost) == search.CNNConfig()
    storage, trial_id = search._storage_and_id(study, lost)
    storage.set_trial_user_attr(trial_id, "interrupted", True)  # as resuming a local study marks it
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    again = study.ask()
    assert again.number == 1 and search.suggest_config("cnn", again) == search.CNNConfig()
    study.tell(again, 0.5)
    assert search.suggest_config("cnn", study.ask()) != search.CNNConfig()


def test_a_trial_killed_mid_training_goes_on_from_its_checkpoint_when_run_again(tmp_path, problem, monkeypatch):
    from mivae import training

    train = TrainConfig(epochs=6, patience=10, min_epochs=0)
    reference = search.search("mlp", DATA, 3, tmp_path / "reference", train, problem=problem, retrain=False)
    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 0.0)
    real_train, calls = search.train_model, []

    def killed_in_trial_1(*args, on_epoch, **kwargs):
        calls.append(kwargs["checkpoint"])

        def kill(epoch, history):
            on_epoch(epoch, history)
            if len(calls) == 2 and epoch == 4:
                raise KeyboardInterrupt

        return real_train(*args, on_epoch=kill, **kwargs)

    monkeypatch.setattr(search, "train_model", killed_in_trial_1)
    with pytest.raises(KeyboardInterrupt):
        search.search("mlp", DATA, 3, tmp_path / "killed", train, problem=problem, retrain=False)
    assert calls[1].exists() and not calls[0].exists()  # the killed trial's state is kept, a finished one's removed
    real_load, loaded = training._load_checkpoint, []
    monkeypatch.setattr(training, "_load_checkpoint", lambda path, *a: loaded.append(path) or real_load(path, *a))
    resumed = search.search("mlp", DATA, 3, tmp_path / "killed", train, problem=problem, retrain=False, resume=True)
    assert loaded == [calls[1]] and calls[2] == calls[1]  # the trial run again found the lost one's checkpoint
    assert not any(calls[1].parent.iterdir())
    summary = json.loads((tmp_path / "killed" / "search.json").read_text())
    expected = json.loads((tmp_path / "reference" / "search.json").read_text())
    killed = summary["trials"].pop(1)  # the kill's trial; its rerun takes the next number
    assert killed["state"] == "FAIL" and len(summary["trials"]) == len(expected["trials"]) == 3
    assert [(t["state"], t["value"]) for t in summary["trials"]] == [
        (t["state"], t["value"]) for t in expected["trials"]
    ]
    assert resumed.best_value == reference.best_value and resumed.best_params == reference.best_params


def test_search_json_of_an_older_version_reads_and_a_damaged_one_does_not():
    from mivae.readback import mismatch
    from mivae.study.search import SEARCH_SHAPE

    older = {  # before trials recorded where they were pruned or whether they were interrupted, and before studies
        "kind": "mlp",
        "best_value": 0.9,
        "best_epoch": 4,
        "best_config": {"hidden": [512]},
        "trials": [{"number": 0, "state": "COMPLETE", "value": 0.9, "params": {}}],
    }
    assert mismatch(older, SEARCH_SHAPE) is None
    assert (
        mismatch({**older, "best_epoch": "4"}, SEARCH_SHAPE)
        == 'best_epoch must be a whole number of at least 0; got "4"'
    )
    assert mismatch({**older, "trials": [{"number": 0}]}, SEARCH_SHAPE) == "trials[0].state is missing"

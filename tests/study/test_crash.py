"""Nothing lost: `mivae reproduce` killed with SIGKILL at several moments ends as an uninterrupted run.

One smoke study runs uninterrupted; beside it (each on one thread, so both fit on two cores) the same
study is killed during a search, during the training of a fixed model, and while its report is being
written, and restarted after each kill. Its results must equal the uninterrupted ones, and nothing
that had finished before a kill may be done again after it.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import optuna
import pytest

from mivae.study import reproduce, search

COMMAND = [sys.executable, "-m", "mivae", "reproduce", "--preset", "smoke", "--threads", "1", "--seed", "0"]
# Wall times, process ids, dates and the database's trial numbers: the only things a rerun may change. (An
# interrupted trial keeps its number, so the trial that replaces it has the next one.)
VOLATILE = {
    "seconds",
    "worker",
    "started",
    "finished",
    "invocations",
    "units",
    "machine",
    "datetime_start",
    "datetime_complete",
    "created",
    "number",
    "best_trial",
}


def _start(out):
    """Starts the study; its stderr goes to a file (a pipe that nobody reads while it runs would stop the study
    once the pipe's buffer is full), read back by `_finish`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([*COMMAND, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    process.log = log
    return process


def _finish(process, timeout=900):
    """Waits for a study started by `_start`; returns its exit status and its stderr."""
    process.wait(timeout=timeout)
    process.log.seek(0)
    return process.returncode, process.log.read()


def _unfinished(out, prefix):
    """Whether a unit whose label starts with `prefix` has begun (its folder exists) but not finished."""
    units = out / "units"
    return units.is_dir() and any(p.name.startswith(prefix) and not (p / "unit.json").exists() for p in units.iterdir())


def _searching(out):
    """A search has finished a trial and is running the next: the kill lands inside a trial, during training.

    The study's database is opened read-only: loading it with optuna would create its tables, racing the study.
    """
    units = out / "units"
    if not units.is_dir():
        return False
    for unit in units.iterdir():
        database = unit / "study.db"
        if not (unit / "unit.json").exists() and database.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1)) as db:
                    states = {row[0] for row in db.execute("SELECT state FROM trials")}
            except sqlite3.Error:  # its tables are not made yet, or it is busy
                continue
            if {"COMPLETE", "RUNNING"} <= states:
                return True
    return False


def _writing_report(out):
    figures = out / "report" / "figures"
    return figures.is_dir() and any(figures.glob("*.png"))


def _kill_when(out, moment, timeout=900):
    """Starts the study and kills it with SIGKILL as soon as `moment(out)` holds; returns whether it was killed."""
    process = _start(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if moment(out):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait(timeout=60)
    return False


def _finished_work(out):
    """Every finished unit and evaluation, by path: its content and the time it was written."""
    paths = [*out.glob("units/*/unit.json"), *out.glob("results/*/*.json")]
    return {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def _stable(value):
    """The content of a result without wall times, dates and process ids, recursively."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):  # a search's log also lists the trials a kill interrupted: the record, not a result
        return [_stable(v) for v in value if not (isinstance(v, dict) and v.get("interrupted"))]
    return value


def _results(out):
    return {p.relative_to(out): _stable(json.loads(p.read_text())) for p in sorted(out.glob("results/**/*.json"))}


@pytest.fixture(scope="module")
def killed_and_uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    reference = _start(root / "uninterrupted")
    out = root / "killed"
    moments = {
        "during a search": _searching,
        "while training a fixed model": lambda o: _unfinished(o, "table3-"),
        "while writing the report": _writing_report,
    }
    killed, kept = {}, []
    for name, moment in moments.items():
        killed[name] = _kill_when(out, moment)
        kept.append(_finished_work(out))
    left = sorted(p.name for p in out.rglob("*.part"))  # half-written by a kill, if one landed mid-write
    status = _finish(_start(out))
    return {
        "out": out,
        "reference": root / "uninterrupted",
        "killed": killed,
        "kept": kept,
        "left": left,
        "status": status,
        "reference_status": _finish(reference),
    }


def test_every_kill_landed_at_its_moment_and_the_restarts_finished(killed_and_uninterrupted):
    run = killed_and_uninterrupted
    assert run["killed"] == dict.fromkeys(run["killed"], True)
    assert run["status"][0] == 0, run["status"][1]
    assert run["reference_status"][0] == 0, run["reference_status"][1]
    assert not list(run["out"].rglob("*.part")), run["left"]  # what a kill left half-written was removed on restart
    cells = [_stable(json.loads((o / "report" / "results.json").read_text())) for o in (run["out"], run["reference"])]
    assert cells[0] == cells[1]  # every table cell and observation of the report


def test_results_after_three_kills_equal_those_of_an_uninterrupted_run(killed_and_uninterrupted):
    killed, reference = _results(killed_and_uninterrupted["out"]), _results(killed_and_uninterrupted["reference"])
    assert killed.keys() == reference.keys() and len(killed) > 100
    for path in reference:
        assert killed[path] == reference[path], path


def test_the_killed_run_records_the_trial_its_kill_interrupted(killed_and_uninterrupted):
    logs = [json.loads(p.read_text()) for p in killed_and_uninterrupted["out"].glob("units/*/search.json")]
    assert any(t["interrupted"] and t["state"] == "FAIL" for log in logs for t in log["trials"])


def test_nothing_finished_before_a_kill_was_done_again(killed_and_uninterrupted):
    out = killed_and_uninterrupted["out"]
    final = _finished_work(out)
    kept = killed_and_uninterrupted["kept"]
    assert (
        len(kept[0]) < len(kept[1]) < len(final)
    )  # each restart went on from where it stopped (the first kill: mid-search)
    for before in kept:
        for path, (content, written) in before.items():
            assert final[path] == (content, written), f"{path} was written again after a kill"


def test_no_search_ran_a_trial_twice_or_beyond_its_budget(killed_and_uninterrupted):
    out = killed_and_uninterrupted["out"]
    preset = reproduce.PRESETS["smoke"]
    searches = [p for p in (out / "units").iterdir() if (p / "study.db").exists()]
    assert searches
    for unit in searches:
        kind = json.loads((unit / "unit.json").read_text())["spec"]["kind"]
        for summary in optuna.get_all_study_summaries(f"sqlite:///{unit / 'study.db'}"):
            study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{unit / 'study.db'}")
            # Finished trials that spent the budget: complete, pruned, or failed with a reason (an unhealthy model).
            complete = [t for t in study.trials if t.state.is_finished() and search.spends_budget(t)]
            assert len(complete) == preset.trials[kind], unit.name
            slots = [t.user_attrs["slot"] for t in complete]
            assert sorted(slots) == list(range(preset.trials[kind])), unit.name  # every slot once: none run twice
            assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_the_report_counts_a_trial_lost_to_a_kill_as_lost_not_failed(killed_and_uninterrupted):
    def trial_counts(out):
        table = (out / "report" / "report.md").read_text().split("## Model selection")[1]
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
        return {(r[0], r[1]): [int(n) for n in r[2].split(" / ")] for r in rows}  # complete / pruned / failed / lost

    killed, reference = (trial_counts(killed_and_uninterrupted[k]) for k in ("out", "reference"))
    assert killed.keys() == reference.keys() and killed
    assert sum(c[3] for c in killed.values()) >= 1 and sum(c[3] for c in reference.values()) == 0
    assert {k: c[:3] for k, c in killed.items()} == {k: c[:3] for k, c in reference.items()}

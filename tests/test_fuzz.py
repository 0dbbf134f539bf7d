"""Run directories damaged at random (tests/fuzzing.py): `mivae evaluate` on each either succeeds or says what is wrong
in one sentence with exit status 2, writes nothing but its evaluation.json, and stays within a memory bound."""

import numpy as np
import pytest
from fuzzing import copy, damage, failures, run_cases, snapshot

from mivae.cli import main

CASES = 48  # damaged copies, half of an MLP's run directory and half of a VAE's
BOUND = 1 << 30  # bytes the address space may grow by after the first, undamaged case: a gigabyte
RUN_FILES = ["config.json", "history.json", "metrics.json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small trained MLP and VAE on digits."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    for kind in ("mlp", "vae"):
        argv = ["train", kind, "--dataset", "digits", "--epochs", "1", "--limit", "300", "--threads", "1"]
        assert main([*argv, "--out", str(root / kind)]) == 0
    return root


def test_a_run_directory_damaged_at_random_is_evaluated_or_refused_in_one_sentence(runs, tmp_path):
    rng = np.random.default_rng(0)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    folders, descriptions = [], []
    for i in range(CASES + 1):
        folder = copy(runs / ("mlp", "vae")[i % 2], tmp_path / "cases" / str(i))
        descriptions.append("undamaged" if i == 0 else damage(folder, rng, RUN_FILES, ["model.safetensors"]))
        folders.append(folder)
    before = [snapshot(f, leave_out=["evaluation.json"]) for f in folders]
    cases = [["evaluate", str(f), "--threads", "1", "--imputations", "1"] for f in folders]
    results = run_cases(cases, BOUND, cwd)
    assert results[0][0] == 0, results[0]  # the undamaged run is evaluated
    assert failures(results, descriptions) == []
    assert [snapshot(f, leave_out=["evaluation.json"]) for f in folders] == before  # nothing else written
    assert list(cwd.iterdir()) == []
    refused = sum(status == 2 for status, _ in results)
    assert 0.5 * CASES <= refused < CASES  # most damage is caught, and some leaves a run that still works

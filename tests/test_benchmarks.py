import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
BENCH = runpy.run_path(str(BENCHMARK))  # its functions, without running it


def test_the_benchmark_smoke_run_measures_every_figure(tmp_path, monkeypatch):
    out, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(sys, "argv", ["run.py", "--smoke", "--threads", "1", "--out", str(out), "--markdown", str(md)])
    try:
        runpy.run_path(str(BENCHMARK), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    results = json.loads(out.read_text())
    peak = results["peak_gflops"]
    assert peak["float32"] > 0 and peak["bfloat16"] > 0 and peak["used"] in (peak["float32"], peak["bfloat16"])
    # every derived figure is what its parts give: a fraction of the peak measured in the same run, ratios of times
    for name in ("vae", "mlp3", "cnn"):
        row = results["training_epoch"][name]
        assert row["seconds"] > 0 and row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak["used"])
        if "matmul_only_seconds" in row:
            assert row["ratio_to_matmuls"] == pytest.approx(row["seconds"] / row["matmul_only_seconds"])
    mlp = results["training_epoch"]["mlp3"]
    assert mlp["matmul_only_seconds"] > 0
    assert mlp["speedup_over_dataloader"] == pytest.approx(mlp["dataloader_seconds"] / mlp["seconds"])
    for name in ("vae", "mlp3"):  # the profile of a step: shares of matmuls, optimiser, casts and the rest
        shares = results["training_epoch"][name]["profile"]
        assert set(shares) == {"matmuls", "optimiser", "casts", "rest"} and sum(shares.values()) == pytest.approx(1)
        assert shares["matmuls"] > 0 and shares["optimiser"] > 0 and min(shares.values()) >= 0
    for name in ("vae+mlp", "vae+cnn"):
        row = results["multiple_imputation"][name]
        rate = row["image_samples_per_second"]
        assert rate > 0 and row["gflops"] == pytest.approx(rate * row["flops_per_sample"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak["used"])
        assert row["seconds_for_10000_images_x_3000"] == pytest.approx(10_000 * 3_000 / rate)
        assert row["speedup_over_per_sample_loop"] == pytest.approx(
            rate / row["per_sample_loop_image_samples_per_second"]
        )
    report = md.read_text()
    assert (
        report.startswith("# Benchmarks") and "| vae+mlp |" in report and "Where a training step's time goes" in report
    )
    title = BENCH["machine_title"](results["machine"])
    assert report.count("## Machine: ") == 1 and title in report.splitlines()


def _section(title, figure):
    return f"{title}\n\nCommand: `python benchmarks/run.py`  \n\n### Targets\n\n| target | {figure} | yes |\n"


def test_a_benchmark_run_replaces_only_its_own_machines_section():
    merge, title = BENCH["merge_report"], BENCH["machine_title"]
    fp32 = title({"processor": "AMD EPYC", "bf16_native": False, "avx512_bf16": False, "amx": False})
    avx = title({"processor": "AMD EPYC", "bf16_native": True, "avx512_bf16": True, "amx": False})
    amx = title({"processor": "Intel Xeon", "bf16_native": True, "avx512_bf16": True, "amx": True})
    assert (fp32, avx, amx) == (
        "## Machine: AMD EPYC, no native bf16",
        "## Machine: AMD EPYC, AVX-512 BF16, no AMX",
        "## Machine: Intel Xeon, AMX",
    )
    tail = "## bf16 against float32 on the same models and test set\n\nrows\n"
    report = merge("", _section(fp32, "1.31x"), tail)
    report = report.replace("| 1.31x | yes |\n", "| 1.31x | yes |\n\nA note added by hand to the fp32 section.\n")
    report = merge(report, _section(avx, "2.45x"), tail)
    assert report.count("## Machine: ") == 2 and report.count("## bf16 against") == 1 and report.endswith(tail)
    again = merge(report, _section(avx, "1.40x"), tail)  # the same machine class again: its section only
    assert "2.45x" not in again and "1.40x" in again and "| 1.31x |" in again and "A note added by hand" in again
    assert again.index(fp32) < again.index(avx) < again.index("## bf16 against")
    third = merge(again, _section(amx, "1.10x"), tail)
    assert third.index(avx) < third.index(amx) < third.index("## bf16 against") and third.startswith("# Benchmarks")


def test_the_gpu_checks_dry_run_takes_every_step_on_the_cpu(tmp_path):
    script = BENCHMARK.parent / "gpu.sh"
    done = subprocess.run(
        ["bash", str(script), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "gpu-check.json").read_text())["steps"]
    assert [r["step"] for r in rows] == [
        "device",
        "train every kind, one epoch",
        "multiple imputation",
        "tabular estimators",
        "benchmark suite",
        "smoke study",
        "all of it within 600 s",
    ]
    assert all(r["ok"] for r in rows) and "every step worked" in done.stdout
    kinds = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert kinds == sorted(
        ["vae", "miwae", "not-miwae", "mlp", "cnn"]
        + [f"{i}+{c}" for i in ("vae", "miwae", "not-miwae") for c in ("mlp", "cnn")]
    )
    for kind in kinds:
        assert json.loads((tmp_path / "runs" / kind / "config.json").read_text())["train"]["device"] == "cpu"
    assert "## Machine: " in (tmp_path / "BENCHMARKS.md").read_text()  # the repository's BENCHMARKS.md is left alone
    assert (tmp_path / "study" / "report" / "report.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check runs for real")
def test_without_a_gpu_the_check_fails_every_step_with_its_reason_and_exits_non_zero(tmp_path):
    done = subprocess.run(
        ["bash", str(BENCHMARK.parent / "gpu.sh"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert done.returncode == 1
    rows = json.loads((tmp_path / "gpu-check.json").read_text())["steps"]
    assert not any(r["ok"] for r in rows[:6]) and rows[-1]["ok"]  # refused at once, so well within the budget
    assert (
        rows[0]["detail"]
        == "device 'cuda' is not available: this torch sees no GPU (a CPU build of torch, or no driver)."
    )
    assert "exited with status 2" in rows[1]["detail"] and "is not available" in rows[3]["detail"]
    assert "FAILED: device, train every kind, one epoch, multiple imputation" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_big_table_benchmark_quick_run_measures_and_reports_its_rows(tmp_path):
    scale = runpy.run_path(str(BENCHMARK.parent / "scale.py"))
    out = tmp_path / "scale.json"
    assert scale["main"](["--quick", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["rows"] == 2000 and row["label"] == "quick" and row["batch_size"] == 64 and row["threads"] == 1
    assert row["lr"] == 1e-3 and row["precision"] == "fp32"  # a small table: the rate of 64-row batches, float32
    assert row["steps"] >= 200 and row["fit_seconds"] > 0 and row["rmse"] < 0.9 * row["mean_rmse"]
    assert row["command"] == f"python benchmarks/scale.py --quick --out {out}"
    complete, incomplete = scale["make_table"](1000)
    assert abs(np.isnan(incomplete).mean() - 0.2) < 0.02 and np.allclose(complete.std(0), 1, atol=1e-3)
    section = BENCH["scale_section"](out)
    assert section.startswith("## Big tables") and "| 2,000 | quick | 64 | 0.001 | fp32 | 1 |" in section
    assert f"Commands: `python benchmarks/scale.py --quick --out {out}`." in section
    kept = BENCH["merge_report"](BENCH["merge_report"]("", _section("## Machine: X, AMX", "1.0x")), None, section)
    assert "## Machine: X, AMX" in kept and kept.endswith(section)  # a tail rebuilt, the machines kept


def test_the_tabular_benchmark_quick_run_scores_every_imputer(tmp_path):
    tabular = runpy.run_path(str(BENCHMARK.parent / "tabular.py"))
    out, raw = tmp_path / "table.md", tmp_path / "rows.json"
    rows = tabular["main"](["--quick", "--datasets", "wine", "--out", str(out), "--json", str(raw)])
    present = {m for m in tabular["OPTIONAL"] if tabular["installed"](m)}  # miceforest, HyperImpute: not in CI
    methods = {"mean", "knn", "iterative", "missforest", "mivae vae", "mivae miwae", "mivae miwae, linear"}
    methods |= {"mivae miwae, min scale 1", "mivae miwae, 5 models", "mivae miwae, student-t, 5 models"} | present
    not_miwae = {"mivae not-miwae", "mivae not-miwae, high", "mivae not-miwae, high, linear"}
    assert {r["method"] for r in rows} == methods | not_miwae
    assert len(rows) == 5 * len(methods) + 3  # five missingness settings; not-MIWAE in the MNAR one only
    linear = tabular["imputers"](False, 0, "mnar")
    assert [(i.decoder, i.max_epochs, i.patience, i.max_steps) for m, i in linear.items() if m.endswith("linear")] == [
        ("linear", 3000, 300, None)
    ] * 2
    floored = linear["mivae miwae, min scale 1"]
    assert (floored.min_scale, floored.max_epochs, floored.patience) == (1.0, 2000, 200)
    default = linear["mivae miwae"].get_params()
    assert linear["mivae miwae, 5 models"].get_params() == {**default, "n_models": 5}
    student = linear["mivae miwae, student-t, 5 models"].get_params()
    assert student == {**default, "n_models": 5, "likelihood": "student-t"}
    assert {r["mechanism"] for r in rows if r["method"] in not_miwae} == {"mnar"}
    for r in rows:
        assert 0 < r["rmse"] < 3 and 0 <= r["accuracy"] <= 1 and r["fit_s"] >= 0
        assert ("accuracy_multiple" in r) == ("spread" in r) == r["method"].startswith("mivae")
        assert r.get("spread") is None or r["spread"] >= 0
    mcar = {r["rate"]: r["missing"] for r in rows if r["mechanism"] == "mcar"}
    assert all(abs(mcar[rate] - rate) < 0.05 for rate in mcar)
    mean_rmse = {r["rate"]: r["rmse"] for r in rows if r["method"] == "mean" and r["mechanism"] == "mcar"}
    assert all(0.8 < v < 1.3 for v in mean_rmse.values())  # the column mean misses by about one standard deviation
    assert json.loads(raw.read_text())["rows"] == rows
    text = out.read_text()
    assert text.count("| wine |") == len(rows)
    assert ("Left out of this run" in text) == (present != set(tabular["OPTIONAL"]))
    assert "mivae's imputers has the best mean RMSE in **" in text and "Not run:" not in text
    cell = {"dataset": "wine", "mechanism": "mcar", "rate": 0.2, "accuracy": 0.9, "fit_s": 1.0, "transform_s": 1.0}
    scored = [{**cell, "method": m, "rmse": v} for m, v in (("mean", 1.0), ("knn", 0.8), ("mivae miwae", 1.3))]
    marked = [line for line in tabular["summarise"](scored).splitlines() if "✗" in line]
    assert len(marked) == 1 and "| mivae miwae | 1.300 ✗ |" in marked[0]  # worse than the column mean: failed
    # fits that imputed the columns' means in every row, counted per cell; a row without the spread is not counted
    spreads = [(0, 0.02), (1, 0.6), (2, 0.05)]
    seeded = [{**cell, "method": "mivae vae", "rmse": 1.0, "seed": k, "spread": v} for k, v in spreads]
    old = [{k: v for k, v in r.items() if k != "spread"} for r in seeded]
    line = next(x for x in tabular["summarise"](seeded + [{**old[0], "seed": 3}]).splitlines() if "mivae vae" in x)
    assert "| mivae vae | **1.000 (0.000)** ⊘2 |" in line, line
    assert tabular["_gaps"](seeded[:1] + old) == (
        " The imputations' spread (⊘) was not recorded for mivae vae on wine: they were measured before it was."
    )
    two = [{"dataset": d, "method": m} for d, m in (("wine", "knn"), ("wine", "hyperimpute"), ("digits", "knn"))]
    assert tabular["_gaps"](two) == " Not run: hyperimpute on digits; those settings are decided without it."
    # a rerun with one method's rows dropped runs that method alone and puts its rows back
    kept = [r for r in rows if r["method"] != "mivae not-miwae, high"]
    raw.write_text(json.dumps({"rows": kept}))
    again = tabular["main"](["--quick", "--datasets", "wine", "--out", str(out), "--json", str(raw)])
    assert again[: len(kept)] == kept and [r["method"] for r in again[len(kept) :]] == ["mivae not-miwae, high"]


def test_the_mnar_benchmark_quick_run_follows_the_protocol_and_scores_every_imputer(capsys):
    mnar = runpy.run_path(str(BENCHMARK.parent / "mnar.py"))
    X, mask = mnar["protocol"](np.arange(24.0).reshape(6, 4) ** 1.5)
    assert np.allclose(X.mean(axis=0), 0) and np.allclose(X.std(axis=0), 1)
    assert not mask[:, 1::2].any()  # every other column stays complete
    assert (mask[:, ::2] == (X[:, ::2] > 0)).all() and mask.any()  # the rest lose every value above their mean
    rows = mnar["run"]("iris", 1, True)
    assert {r["method"] for r in rows} == set(mnar["imputers"](0, True))
    rmse = {r["method"]: r["rmse"] for r in rows}
    assert rmse["mean"] > 1 and all(0 < v < 3 for v in rmse.values()), rmse
    paper = mnar["imputers"](0, True, 5)["mivae not-miwae, paper"]
    assert (paper.activation, paper.latent, paper.standardize, paper.validation_fraction) == ("tanh", 4, False, 0)
    table, best, beats = mnar["markdown"](rows + [{**rows[-1], "table": "wine"}], {"iris": ((150, 4), 0.2),
                                          "wine": ((178, 13), 0.3)}, 1)  # fmt: skip
    assert "| wine | 178 x 13 | 30.0% | " in table and table.count("not run") == len(rows) - 1
    assert best["wine"] == rows[-1]["method"] == "mivae not-miwae, high, linear" and beats["wine"] is False  # no MICE
    linear = mnar["imputers"](0, False)["mivae not-miwae, high, linear"]
    assert (linear.decoder, linear.missingness, linear.max_epochs, linear.patience, linear.max_steps) == (
        "linear", "self-masking-high", 3000, 300, None
    )  # fmt: skip
    scores = [
        ("a", "mice", 1.0),
        ("b", "mice", 1.0),
        ("a", "mivae miwae", 0.9),
        ("b", "mivae miwae", 0.8),
        ("a", "mivae not-miwae", 0.5),
        ("b", "mivae not-miwae", 1.2),
        ("a", "mivae not-miwae, high", 0.5),
    ]
    # one setting that beats MICE everywhere; one beaten on b; one that never ran on b
    assert mnar["everywhere"]([{"table": t, "method": m, "rmse": v} for t, m, v in scores]) == ["mivae miwae"]
    late = {"table": "iris", "method": "m", "rmse": 1.0, "date": "2026-12-07", "machine": "X"}
    assert mnar["_not_run"](rows + [late]) == (
        " The rows of m were measured 2026-12-07 by `python benchmarks/mnar.py --only 'm' --tables iris` on X."
    )


def test_the_imputation_benchmark_quick_run_scores_every_imputer_and_states_the_targets(tmp_path):
    bench = runpy.run_path(str(BENCHMARK.parent / "impute.py"))
    rows = bench["main"](["--quick", "--settings", "rp50,vl70", "--out", str(tmp_path)])
    imputers = {"masked-elbo", "miwae", "not-miwae", "refined-miwae", "mean", "knn", "iterative"}
    assert {r["imputer"] for r in rows} == imputers and len(rows) == 2 * (4 * 2 + 3)  # mivae: single and mean of 10
    for r in rows:
        assert 0 < r["rmse"] < 1 and 0 <= r["accuracy"] <= 1 and r["fit_s"] >= 0 and r["transform_s"] > 0
        assert r["test_images"] == 200 and r["fit_images"] == 500
        assert abs(r["missing"] - {"rp50": 0.5, "vl70": 0.7}[r["setting"]]) < 0.1
    mean_rmse = [r["rmse"] for r in rows if r["imputer"] == "mean"]
    assert all(0.15 < v < 0.45 for v in mean_rmse)  # a pixel mean misses by about a third of the range
    report = (tmp_path / "README.md").read_text()
    assert report.count("**met**") + report.count("**missed**") == 4  # RP50's three targets and VL70's
    assert (tmp_path / "examples.png").stat().st_size > 10_000
    again = bench["main"](["--quick", "--settings", "rp50,vl70", "--out", str(tmp_path)])
    assert again == rows  # a rerun reuses every finished result
    more = bench["main"](["--quick", "--settings", "rp70", "--imputers", "mean,refined-miwae", "--out", str(tmp_path)])
    assert [(r["imputer"], r["variant"]) for r in more if r["setting"] == "rp70"] == [
        ("refined-miwae", "mean of 10"),
        ("refined-miwae", "single"),
        ("mean", "single"),
    ]
    report = (tmp_path / "README.md").read_text()
    assert (
        report.count("`python benchmarks/impute.py --quick --settings rp50,vl70 --out") == 1
    )  # each row names its run
    assert "--imputers mean,refined-miwae" in report


def test_the_imputation_benchmark_names_the_known_imputers_for_an_unknown_one(tmp_path, capsys):
    bench = runpy.run_path(str(BENCHMARK.parent / "impute.py"))
    with pytest.raises(SystemExit) as exit_:
        bench["main"](["--quick", "--imputers", "miwae,magic", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "unknown imputer 'magic'" in error and "refined-miwae" in error and not (tmp_path / "results.json").exists()

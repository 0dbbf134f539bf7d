import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_the_benchmark_smoke_run_measures_every_figure(tmp_path, monkeypatch):
    out, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(sys, "argv", ["run.py", "--smoke", "--threads", "1", "--out", str(out), "--markdown", str(md)])
    try:
        runpy.run_path(str(BENCHMARK), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    results = json.loads(out.read_text())
    assert results["peak_gflops"]["float32"] > 0 and results["peak_gflops"]["bfloat16"] > 0
    for name in ("vae", "mlp3", "cnn"):
        row = results["training_epoch"][name]
        assert row["seconds"] > 0 and 0 < row["fraction_of_peak"]
    assert results["training_epoch"]["mlp3"]["matmul_only_seconds"] > 0
    for name in ("vae+mlp", "vae+cnn"):
        row = results["multiple_imputation"][name]
        assert row["image_samples_per_second"] > 0 and row["speedup_over_per_sample_loop"] > 0
    report = md.read_text()
    assert report.startswith("# Benchmarks") and "| vae+mlp |" in report


def test_the_tabular_benchmark_quick_run_scores_every_imputer(tmp_path):
    tabular = runpy.run_path(str(BENCHMARK.parent / "tabular.py"))
    out, raw = tmp_path / "table.md", tmp_path / "rows.json"
    rows = tabular["main"](["--quick", "--datasets", "wine", "--out", str(out), "--json", str(raw)])
    methods = {"mean", "knn", "iterative", "mivae vae", "mivae miwae"}
    assert {r["method"] for r in rows} == methods and len(rows) == 5 * len(methods)   # five missingness settings
    for r in rows:
        assert 0 < r["rmse"] < 3 and 0 <= r["accuracy"] <= 1 and r["fit_s"] >= 0
        assert ("accuracy_multiple" in r) == r["method"].startswith("mivae")
    mcar = {r["rate"]: r["missing"] for r in rows if r["mechanism"] == "mcar"}
    assert all(abs(mcar[rate] - rate) < 0.05 for rate in mcar)
    mean_rmse = {r["rate"]: r["rmse"] for r in rows if r["method"] == "mean" and r["mechanism"] == "mcar"}
    assert all(0.8 < v < 1.3 for v in mean_rmse.values())   # the column mean misses by about one standard deviation
    assert json.loads(raw.read_text())["rows"] == rows
    assert out.read_text().count("| wine |") == len(rows)


def test_the_imputation_benchmark_quick_run_scores_every_imputer_and_states_the_targets(tmp_path):
    bench = runpy.run_path(str(BENCHMARK.parent / "impute.py"))
    rows = bench["main"](["--quick", "--settings", "rp50,vl70", "--out", str(tmp_path)])
    imputers = {"masked-elbo", "miwae", "not-miwae", "refined-miwae", "mean", "knn", "iterative"}
    assert {r["imputer"] for r in rows} == imputers and len(rows) == 2 * (4 * 2 + 3)   # mivae: single and mean of 10
    for r in rows:
        assert 0 < r["rmse"] < 1 and 0 <= r["accuracy"] <= 1 and r["fit_s"] >= 0 and r["transform_s"] > 0
        assert r["test_images"] == 200 and r["fit_images"] == 500
        assert abs(r["missing"] - {"rp50": 0.5, "vl70": 0.7}[r["setting"]]) < 0.1
    mean_rmse = [r["rmse"] for r in rows if r["imputer"] == "mean"]
    assert all(0.15 < v < 0.45 for v in mean_rmse)   # a pixel mean misses by about a third of the range
    report = (tmp_path / "README.md").read_text()
    assert report.count("**met**") + report.count("**missed**") == 4   # RP50's three targets and VL70's
    assert (tmp_path / "examples.png").stat().st_size > 10_000
    again = bench["main"](["--quick", "--settings", "rp50,vl70", "--out", str(tmp_path)])
    assert again == rows   # a rerun reuses every finished result
    more = bench["main"](["--quick", "--settings", "rp70", "--imputers", "mean,refined-miwae", "--out", str(tmp_path)])
    assert [(r["imputer"], r["variant"]) for r in more if r["setting"] == "rp70"] == [
        ("refined-miwae", "mean of 10"), ("refined-miwae", "single"), ("mean", "single")]
    report = (tmp_path / "README.md").read_text()
    assert report.count("`python benchmarks/impute.py --quick --settings rp50,vl70 --out") == 1   # each row names its run
    assert "--imputers mean,refined-miwae" in report


def test_the_imputation_benchmark_names_the_known_imputers_for_an_unknown_one(tmp_path, capsys):
    bench = runpy.run_path(str(BENCHMARK.parent / "impute.py"))
    with pytest.raises(SystemExit) as exit_:
        bench["main"](["--quick", "--imputers", "miwae,magic", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "unknown imputer 'magic'" in error and "refined-miwae" in error and not (tmp_path / "results.json").exists()

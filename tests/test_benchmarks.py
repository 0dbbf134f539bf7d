import json
import runpy
import sys
from pathlib import Path

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

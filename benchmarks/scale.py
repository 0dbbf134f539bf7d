"""Big tables: MIWAEImputer's fit and transform time, and its RMSE, as the table grows from 10^4 to 10^6 rows.

    python benchmarks/scale.py                            # 10^4, 10^5 and 10^6 rows with the defaults
    python benchmarks/scale.py --rows 100000 --earlier    # the same table with the defaults before the step budget
    python benchmarks/scale.py --rows 1000000 --max-steps 1500   # the defaults but a smaller budget of steps
    python benchmarks/scale.py --quick                    # a few thousand rows: seconds (used by the tests)

The table: 20 columns driven by 4 latent factors through a random two-layer network with noise (so an
imputer that learns the manifold beats the column mean by far), standardised, 20 % of the entries
missing completely at random. RMSE on the missing entries, in standard deviations. Results go to
benchmarks/scale.json (one row per rows x settings, replaced when measured again) and the "Big tables"
section of BENCHMARKS.md (written by benchmarks/run.py's `scale_section`).
"""

import argparse
import json
import runpy
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mivae.artifacts import atomic_path
from mivae.images.runs import write_json
from mivae.tables.estimators import MIWAEImputer

ROOT = Path(__file__).resolve().parents[1]
BENCH = runpy.run_path(str(ROOT / "benchmarks" / "run.py"))  # its machine titles and BENCHMARKS.md's sections
RESULTS = ROOT / "benchmarks" / "scale.json"
# MIWAEImputer's defaults before the budget of gradient steps: up to 500 epochs of batches of 64, one thread, fp32.
EARLIER = {
    "max_epochs": 500,
    "patience": 50,
    "batch_size": 64,
    "lr": 1e-3,
    "threads": 1,
    "precision": "fp32",
    "max_steps": None,
}


def make_table(rows, columns=20, factors=4, missing=0.2, seed=0):
    """Returns (complete, incomplete) float32 tables of `rows` x `columns`, standardised, NaN where missing."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(factors, 32)).astype(np.float32)
    w2 = (rng.normal(size=(32, columns)) / np.sqrt(32)).astype(np.float32)
    complete = np.empty((rows, columns), dtype=np.float32)
    for i in range(0, rows, 100_000):  # in blocks: the hidden layer of a million rows would take 128 MB at once
        n = min(100_000, rows - i)
        z = rng.normal(size=(n, factors)).astype(np.float32)
        complete[i : i + n] = np.tanh(z @ w1) @ w2 + 0.1 * rng.normal(size=(n, columns)).astype(np.float32)
    complete = (complete - complete.mean(0)) / complete.std(0)
    incomplete = np.where(rng.random((rows, columns)) < missing, np.nan, complete).astype(np.float32)
    return complete, incomplete


def measure(rows, settings, seed=0):
    """Fits and transforms the table of `rows` rows with MIWAEImputer(**settings); returns its row of results."""
    complete, incomplete = make_table(rows, seed=seed)
    imputer = MIWAEImputer(random_state=seed, **settings)
    start = time.perf_counter()
    imputer.fit(incomplete)
    fitted = time.perf_counter()
    completed = imputer.transform(incomplete)
    done = time.perf_counter()
    missing = np.isnan(incomplete)
    history = imputer.history_
    return {
        "rows": rows,
        "settings": settings,
        "seed": seed,
        "fit_seconds": round(fitted - start, 1),
        "transform_seconds": round(done - fitted, 1),
        "seconds": round(done - start, 1),
        "epochs": len(history.train_loss),
        "steps": imputer.steps_,
        "batch_size": imputer.batch_size_,
        "threads": imputer.threads_,
        "lr": imputer.lr_,
        "precision": imputer.precision_,
        "rmse": float(np.sqrt(np.mean((completed[missing] - complete[missing]) ** 2))),
        "mean_rmse": float(np.sqrt(np.mean(complete[missing] ** 2))),  # the column mean is 0 after standardising
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", help="table sizes (default: 10000 100000 1000000)")
    parser.add_argument("--earlier", action="store_true", help="the defaults before the budget of gradient steps")
    parser.add_argument("--max-steps", type=int, help="the defaults, but this budget of gradient steps")
    parser.add_argument("--quick", action="store_true", help="2,000 rows, a short budget: seconds")
    parser.add_argument(
        "--out",
        help="JSON results, merged by rows and settings (default: benchmarks/scale.json; "
        "with --quick, out/scale-quick.json)",
    )
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)])
    args.out = args.out or str(ROOT / "out" / "scale-quick.json" if args.quick else RESULTS)
    if args.quick:
        sizes, settings, label = [2000], {"max_steps": 200}, "quick"
    else:
        sizes = args.rows or [10_000, 100_000, 1_000_000]
        settings, label = (EARLIER, "earlier defaults") if args.earlier else ({}, "defaults")
        if args.max_steps:
            settings, label = {**settings, "max_steps": args.max_steps}, f"{label}, max_steps={args.max_steps}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(out.read_text())["rows"] if out.exists() else []
    for rows in sizes:
        row = {
            **measure(rows, settings),
            "label": label,
            "machine": BENCH["machine_label"](),
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        print(
            f"{rows:>9,} rows, {label}: fit {row['fit_seconds']} s, transform {row['transform_seconds']} s, "
            f"RMSE {row['rmse']:.4f} (column mean {row['mean_rmse']:.4f})",
            flush=True,
        )
        kept = [r for r in kept if (r["rows"], r["label"]) != (rows, label)] + [row]
        write_json(out, {"rows": kept})
    if out == RESULTS:  # the repository's results: its BENCHMARKS.md shows them
        markdown = ROOT / "BENCHMARKS.md"
        existing = markdown.read_text() if markdown.exists() else ""
        with atomic_path(markdown) as tmp:
            tmp.write_text(BENCH["merge_report"](existing, None, BENCH["tail"]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

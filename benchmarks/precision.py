"""Does bf16 change the science? The same trained models and corrupted test set, float32 against bf16.

    python benchmarks/precision.py RUN_DIR [RUN_DIR ...] [--imputations 10] [--data-dir DIR]

For each run (Type 1 or Type 2), predicts the test set in float32 and in bf16 and reports
both accuracies and the paired z of §3.6 between them (bf16 vs float32); for Type 2 runs,
single imputation, and for VAE-based ones multiple imputation with --imputations imputations too. Writes
benchmarks/precision.json, which benchmarks/run.py puts into BENCHMARKS.md.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from mivae.hardware import bf16_supported
from mivae.images.imputation import multiple_imputation, predict_proba
from mivae.images.pipeline import sees_mask
from mivae.images.problem import make_problem
from mivae.images.runs import load_run, write_json
from mivae.stats import accuracy, paired_test

ROOT = Path(__file__).resolve().parents[1]


def compare(name, predict, y):
    """Returns accuracies in both precisions and their paired z, predict(dtype) -> predicted classes."""
    row = {"name": name}
    predictions = {}
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        predictions[dtype] = predict(dtype)
        label = str(dtype).removeprefix("torch.")
        row[f"{label}_accuracy"] = accuracy(predictions[dtype], y)
        row[f"{label}_seconds"] = time.perf_counter() - start
    test = paired_test(predictions[torch.bfloat16], predictions[torch.float32], y)
    row.update(differing_images=test.n_differ, z_bf16_vs_float32=test.z, mcnemar_p=test.mcnemar_p)
    print(
        f"{name}: float32 {row['float32_accuracy']:.4f}  bf16 {row['bfloat16_accuracy']:.4f}  "
        f"differ on {test.n_differ}  z {test.z:+.2f}",
        flush=True,
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories written by 'mivae train'")
    parser.add_argument(
        "--imputations", "--samples", type=int, default=10, help="imputations M of multiple imputation (default: 10)"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's files")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "precision.json"))
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.runs:
        run = load_run(run_dir)
        test = make_problem(run.data, args.data_dir).test
        with_mask = sees_mask(run.kind, run.model_config, run.vae_config)
        x = test.inputs(with_mask=with_mask)  # (N, 2, H, W) for a mask-aware model
        y = test.y.numpy()
        aware = ", mask-aware" if with_mask and "+" not in run.kind else ""
        label = f"{run.kind}{aware} ({run.data.method} {run.data.level:.0%})"
        rows.append(
            compare(
                f"{label}, single" if "+" in run.kind else label,  # a Type 2 model's single imputation
                lambda dtype: predict_proba(run.model, x, dtype=dtype).argmax(1).numpy(),
                y,
            )
        )
        if run.kind.startswith("vae+"):
            rows.append(
                compare(
                    f"{label}, M={args.imputations}",
                    lambda dtype: (
                        multiple_imputation(run.model, x, test.y, args.imputations, seed=0, dtype=dtype)
                        .predictions[args.imputations]
                        .numpy()
                    ),
                    y,
                )
            )
    write_json(
        args.out,
        {
            "bf16_native": bf16_supported("cpu"),
            "test_images": len(y),
            "rows": rows,
            "command": "python benchmarks/precision.py " + " ".join(argv or sys.argv[1:]),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check: every step of mivae on one CUDA GPU, in at most 10 minutes; exit status 0 only if all of it works.

    bash benchmarks/gpu.sh                 # on a machine with an NVIDIA GPU and a CUDA build of torch
    bash benchmarks/gpu.sh --dry-run       # on a CPU: the same steps, on the CPU and small (the test suite runs it)

The steps, in order:
  1. the device: torch sees the GPU, and mivae resolves "auto" to it;
  2. every model kind trained for one epoch (`mivae train KIND --epochs 1 --device cuda`), each saved run
     recording the device it trained on and, where the GPU has it, bf16;
  3. multiple imputation (`mivae evaluate --imputations 1,10,100`) of a VAE+MLP and a VAE+CNN;
  4. the tabular estimators (MIWAEImputer, VAEImputer) fitted and sampled on the GPU;
  5. the benchmark suite on the GPU (`benchmarks/run.py --device cuda`), its fractions of the GPU's own
     measured matmul peak; its section goes into BENCHMARKS.md;
  6. the smoke study (`mivae reproduce --preset smoke --device cuda`).

Each step's time and outcome are printed and written to OUT/gpu-check.json. The dry run takes the same
steps through the same code with the device set to cpu, on scikit-learn's digits and tiny sizes, and
writes its benchmark report under OUT instead of BENCHMARKS.md.
"""

import argparse
import contextlib
import io
import json
import runpy
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 600  # seconds: the whole check on one GPU


def _settings(dry_run):
    if dry_run:
        return {
            "device": "cpu",
            "data": ["--dataset", "digits", "--limit", "96"],
            "imputations": "1,5",
            "bench": ["--smoke", "--threads", "1"],
            "study": ["--limit", "48", "--thesis-only"],
            "rows": 300,
        }
    return {
        "device": "cuda",
        "data": ["--dataset", "mnist"],
        "imputations": "1,10,100",
        "bench": [],
        "study": [],
        "rows": 20_000,
    }


def _mnist_at_hand():
    """Returns None if MNIST is on this machine (from $MIVAE_DATA_DIR or the user cache), else why not: a machine
    lent for a GPU check may have no network, and each of the eleven trainings would try to download it."""
    from mivae.errors import MivaeError
    from mivae.images.data import load_splits

    try:
        load_splits("mnist", download=False)
    except MivaeError as error:
        return str(error)
    return None


def check_device(device):
    """Step 1: the device is there, and "auto" means it."""
    import torch

    from mivae.hardware import bf16_supported, resolve_device

    resolved = resolve_device(device)
    if device == "cuda" and resolve_device("auto") != resolved:
        raise AssertionError(f"auto resolved to {resolve_device('auto')}, not {resolved}.")
    name = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "the CPU"
    return f"{name}; native bf16: {'yes' if bf16_supported(resolved) else 'no'}"


def train_every_kind(out, settings):
    """Step 2: every model kind, one epoch each; the saved config names the device and the precision it ran in."""
    from mivae.cli import main as mivae
    from mivae.hardware import bf16_supported, resolve_device
    from mivae.models import KINDS

    device = settings["device"]
    trained = []
    for kind in sorted(
        KINDS, key=lambda k: KINDS[k].imputer is not None
    ):  # the imputers first: the Type 2 kinds are built on them
        imputer = KINDS[kind].imputer
        argv = ["train", kind, "--epochs", "1", "--device", device, "--out", str(out / kind), *settings["data"]]
        if imputer:
            argv += ["--vae", str(out / imputer)]
        _call(mivae, argv)
        config = json.loads((out / kind / "config.json").read_text())
        ran_on, named = (resolve_device(d) for d in (config["train"]["device"], device))  # "cuda" is cuda:0
        if ran_on != named:
            raise AssertionError(f"the {kind} run trained on {ran_on}, not {named}.")
        if bf16_supported(device) and config["resolved"]["precision"] != "bfloat16":
            raise AssertionError(f"the {kind} run trained in {config['resolved']['precision']}, not bf16.")
        trained.append(kind)
    return f"{len(trained)} kinds: {', '.join(trained)}"


def multiple_imputation(out, settings):
    """Step 3: the multiple imputation of a VAE+MLP and a VAE+CNN on their test images."""
    from mivae.cli import main as mivae

    rows = []
    for kind in ("vae+mlp", "vae+cnn"):
        _call(
            mivae,
            ["evaluate", str(out / kind), "--imputations", settings["imputations"], "--device", settings["device"]],
        )
        result = json.loads((out / kind / "evaluation.json").read_text())
        largest = max(result["multiple"], key=int)
        rows.append(f"{kind} M={largest} accuracy {result['multiple'][largest]['accuracy']:.4f}")
    return "; ".join(rows)


def estimators(settings):
    """Step 4: the tabular imputers fitted, completed and sampled on the device."""
    import numpy as np

    from mivae.tables.estimators import MIWAEImputer, VAEImputer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(settings["rows"], 20)) @ rng.normal(size=(20, 20))
    X[rng.random(X.shape) < 0.2] = np.nan
    rows = []
    for model in (MIWAEImputer, VAEImputer):
        imputer = model(max_epochs=2, device=settings["device"], random_state=0).fit(X)
        completed, draws = imputer.transform(X), imputer.sample(X[:100], 3)
        if np.isnan(completed).any() or len(draws) != 3:
            raise AssertionError(f"{model.__name__} left gaps or drew {len(draws)} tables, not 3.")
        rows.append(f"{model.__name__} on {next(imputer.model_.parameters()).device}")
    return f"{settings['rows']:,} x 20: " + ", ".join(rows)


def benchmark(out, settings, dry_run):
    """Step 5: the benchmark suite on the device; the report's section for this machine."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "run.py"))
    markdown = out / "BENCHMARKS.md" if dry_run else ROOT / "BENCHMARKS.md"
    results = out / "benchmark.json"
    argv = ["--device", settings["device"], "--out", str(results), "--markdown", str(markdown), *settings["bench"]]
    try:
        code = bench["main"](argv)
    except SystemExit as refused:  # argparse's answer to an argument it refuses, such as an absent GPU
        code = refused.code
    if code:
        raise AssertionError(f"benchmarks/run.py exited with status {code}.")
    figures = json.loads(results.read_text())
    fractions = {name: row["fraction_of_peak"] for name, row in figures["training_epoch"].items()}
    return (
        f"peak {figures['peak_gflops']['used']:,.0f} GFLOP/s; epochs at "
        + ", ".join(f"{name} {f:.0%}" for name, f in fractions.items())
        + " of it"
    )


def smoke_study(out, settings):
    """Step 6: the smoke study, trained and evaluated on the device, and its report."""
    from mivae.cli import main as mivae

    _call(
        mivae,
        [
            "reproduce",
            "--preset",
            "smoke",
            "--device",
            settings["device"],
            "--out",
            str(out / "study"),
            *settings["study"],
        ],
    )
    report = out / "study" / "report" / "report.md"
    if not report.exists():
        raise AssertionError(f"the smoke study wrote no report at {report}.")
    return f"report at {report}"


def _call(command, argv):
    """Runs `mivae ARGV` in this process; a failure is raised with the command's own one-sentence error."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = command(argv)
    if code:
        said = [line for line in errors.getvalue().splitlines() if line.startswith("mivae: ")]
        raise AssertionError(f"`mivae {' '.join(argv)}` exited with status {code}" + (f": {said[-1]}" if said else "."))


def run(out, dry_run=False):
    """Runs every step, each whether or not the one before worked (step 3 needs step 2's runs); returns the rows."""
    settings = _settings(dry_run)
    out.mkdir(parents=True, exist_ok=True)
    missing = None if dry_run else _mnist_at_hand()
    if missing:  # the image steps then check the device on the digits that ship with scikit-learn
        print(f"MNIST is not on this machine ({missing}); the image steps use scikit-learn's digits instead.")
        settings["data"] = ["--dataset", "digits"]
    steps = [
        ("device", lambda: check_device(settings["device"])),
        ("train every kind, one epoch", lambda: train_every_kind(out / "runs", settings)),
        ("multiple imputation", lambda: multiple_imputation(out / "runs", settings)),
        ("tabular estimators", lambda: estimators(settings)),
        ("benchmark suite", lambda: benchmark(out, settings, dry_run)),
        ("smoke study", lambda: smoke_study(out, settings)),
    ]
    rows, started = [], time.monotonic()
    for name, step in steps:
        start = time.monotonic()
        try:
            rows.append({"step": name, "ok": True, "detail": step()})
        except Exception as error:  # a failed step is reported with its reason, and the next one still runs
            reason = str(error) or type(error).__name__
            rows.append({"step": name, "ok": False, "detail": reason, "traceback": traceback.format_exc()})
        rows[-1]["seconds"] = round(time.monotonic() - start, 1)
        print(
            f"{'ok    ' if rows[-1]['ok'] else 'FAILED'} {name} ({rows[-1]['seconds']:.0f} s): {rows[-1]['detail']}",
            flush=True,
        )
    total = time.monotonic() - started
    within = dry_run or total <= BUDGET
    rows.append(
        {"step": f"all of it within {BUDGET} s", "ok": within, "detail": f"{total:.0f} s", "seconds": round(total, 1)}
    )
    (out / "gpu-check.json").write_text(json.dumps({"dry_run": dry_run, "steps": rows}, indent=2) + "\n")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="the same steps on the CPU, small: checks they would run"
    )
    parser.add_argument("--out", default=str(ROOT / "out" / "gpu-check"), help="folder for the runs and the results")
    args = parser.parse_args(argv)
    rows = run(Path(args.out), args.dry_run)
    failed = [row["step"] for row in rows if not row["ok"]]
    print(
        f"gpu check{' (dry run, on the CPU)' if args.dry_run else ''}: "
        + (f"FAILED: {', '.join(failed)}" if failed else f"every step worked in {rows[-1]['seconds']:.0f} s")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

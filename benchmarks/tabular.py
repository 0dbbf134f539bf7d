"""The tabular benchmark: mivae's imputers against scikit-learn's on tables that ship with scikit-learn.

For each dataset, missingness setting and seed: the complete table is amputed (mivae.tables.amputation),
split 70/30 stratified, every imputer is fitted on the incomplete training rows and fills both
parts (not-MIWAE, mivae's imputer for values missing not at random, in the MNAR settings only). The
competitors: the mean, KNN, IterativeImputer (MICE with Bayesian ridge), missForest (IterativeImputer
with missForest's random forest: 100 trees, the square root of the features at each split, 10 rounds),
miceforest (LightGBM MICE, 5 rounds, its defaults) and HyperImpute (its own `hyperimpute` plugin, which
picks a learner per column); the last two where their packages are installed (see OPTIONAL). Scores:
- RMSE on the missing test entries, each column in units of its training standard deviation;
- downstream accuracy of one fixed classifier (standardise, then logistic regression) trained on
  the imputed training rows and tested on the imputed test rows;
- for mivae's imputers also the multiple-imputation accuracy: the same classifier trained on M = 10
  imputations of the training rows stacked, its probabilities averaged over 10 imputations of each
  test row (what MultipleImputationClassifier does);
- fit and transform wall time (transform: both parts).
scikit-learn's imputers work on standardised columns (scaled on the observed training entries and
scaled back), so KNNImputer's distances are not dominated by the widest column.

    python benchmarks/tabular.py                       # the full run -> docs/tabular-benchmark.md
    python benchmarks/tabular.py --quick               # one seed, few epochs, subsets: seconds
"""

import argparse
import importlib.util
import json
import runpy
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (makes IterativeImputer importable)
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mivae.artifacts import atomic_path
from mivae.tables.amputation import ampute, rmse_missing
from mivae.tables.estimators import COLLAPSED, MIWAEImputer, NotMIWAEImputer, VAEImputer

REPO = Path(__file__).resolve().parents[1]
BENCH = runpy.run_path(str(Path(__file__).with_name("run.py")))  # the suite's description of the machine
DATASETS = {"breast-cancer": load_breast_cancer, "wine": load_wine, "digits": load_digits}
SETTINGS = [("mcar", 0.2), ("mcar", 0.5), ("mcar", 0.8), ("mar", 0.5), ("mnar", 0.5)]
MULTIPLE = 10  # M, imputations per row for the multiple-imputation accuracy
# The linear decoder's training: it learns more slowly than the MLP (with the defaults, 500 epochs and patience 50, it
# ran to the last epoch still improving). On these tables of numbers MIWAE's imputations with it are exact.
LINEAR = dict(max_epochs=3000, patience=300, max_steps=None)
# A floor of one standard deviation on the continuous heads' scales (min_scale=1): on digits' pixels, which repeat
# values exactly, the default floor lets the model concentrate on them. The bound rises slowly at first with it:
# patience 50 ended some fits 50 to 120 epochs in, where patience 200 went on to better imputations.
FLOORED = dict(min_scale=1.0, max_epochs=2000, patience=200)
# An ensemble's networks (n_models): on wine, where one MIWAE's imputations vary from start to start, five imputed
# closer than one at MCAR 20 and 50 % and MAR, and ten no closer than five at MCAR 20 % (the one setting tried). With
# Student-t heads (as the MIWAE paper's UCI tables) five imputed wine closer still in those three settings. Both were
# chosen on amputations of seeds of their own (100 to 102), not the benchmark's.
ENSEMBLE = 5
# Competitors from packages outside mivae's own dependencies, by method: the package and how it is installed.
# miceforest 6.0.5 calls a LightGBM internal that 4.7 changed, hence the pin.
OPTIONAL = {
    "miceforest": ("miceforest", "pip install miceforest==6.0.5 lightgbm==4.6.0"),
    "hyperimpute": ("hyperimpute", "pip install hyperimpute==0.1.17 torch==2.13.0 lightgbm==4.6.0 pandas==2.3.3"),
}  # HyperImpute 0.1.17 writes through chained assignment, which pandas 3 ignores: it then imputes nothing


def imputers(quick, seed, mechanism):
    """Returns the competing imputers by name, unfitted: not-MIWAE only where values go missing not at random, and
    the OPTIONAL competitors only where their packages are installed."""
    fast = {"max_epochs": 20} if quick else {}
    long = {**LINEAR, **fast}  # the linear decoder's training
    trees = 10 if quick else 100
    forest = RandomForestRegressor(n_estimators=trees, max_features="sqrt", n_jobs=1, random_state=seed)
    chosen = {
        "mean": Scaled(SimpleImputer(strategy="mean")),
        "knn": Scaled(KNNImputer(n_neighbors=5)),
        "iterative": Scaled(IterativeImputer(max_iter=10, random_state=seed)),
        "missforest": Scaled(IterativeImputer(estimator=forest, max_iter=10, random_state=seed)),
        "miceforest": MiceForest(seed, rounds=2 if quick else 5),
        "hyperimpute": HyperImpute(seed),
        "mivae vae": VAEImputer(random_state=seed, **fast),
        "mivae miwae": MIWAEImputer(random_state=seed, **fast),
        "mivae miwae, linear": MIWAEImputer(decoder="linear", random_state=seed, **long),
        "mivae miwae, min scale 1": MIWAEImputer(random_state=seed, **{**FLOORED, **fast}),
        f"mivae miwae, {ENSEMBLE} models": MIWAEImputer(n_models=ENSEMBLE, random_state=seed, **fast),
        f"mivae miwae, student-t, {ENSEMBLE} models": MIWAEImputer(
            likelihood="student-t", n_models=ENSEMBLE, random_state=seed, **fast
        ),
    }
    if mechanism == "mnar":
        chosen["mivae not-miwae"] = NotMIWAEImputer(random_state=seed, **fast)
        chosen["mivae not-miwae, high"] = NotMIWAEImputer(missingness="self-masking-high", random_state=seed, **fast)
        chosen["mivae not-miwae, high, linear"] = NotMIWAEImputer(
            missingness="self-masking-high", decoder="linear", random_state=seed, **long
        )
    return {m: imputer for m, imputer in chosen.items() if m not in OPTIONAL or installed(m)}


def installed(method):
    """Whether the package an OPTIONAL competitor needs can be imported."""
    return importlib.util.find_spec(OPTIONAL[method][0]) is not None


class Scaled:
    """A scikit-learn imputer on columns standardised by their observed training entries."""

    def __init__(self, imputer):
        self.imputer = imputer

    def fit(self, X):
        self.scaler = StandardScaler().fit(X)  # ignores NaN
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.imputer.fit(self.scaler.transform(X))
        return self

    def transform(self, X):
        filled = self.scaler.inverse_transform(self.imputer.transform(self.scaler.transform(X)))
        return np.where(np.isnan(X), filled, X)


class MiceForest:
    """miceforest's LightGBM MICE with its defaults (mean matching on 5 candidates): one imputed dataset, fitted
    for `rounds` rounds; new rows are imputed by its fitted models."""

    def __init__(self, seed, rounds):
        self.seed, self.rounds = seed, rounds

    def fit(self, X):
        import miceforest

        self.kernel = miceforest.ImputationKernel(_frame(X), num_datasets=1, random_state=self.seed)
        self.kernel.mice(self.rounds, num_threads=1)
        return self

    def transform(self, X):
        imputed = self.kernel.impute_new_data(_frame(X), random_state=self.seed)
        return imputed.complete_data(0, iteration=self.rounds).to_numpy()  # without it: the random first fill


def _frame(X):
    """An array as a DataFrame with named columns and a fresh index from 0, as miceforest and HyperImpute need."""
    import pandas as pd

    return pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])


class HyperImpute:
    """HyperImpute's `hyperimpute` plugin with its defaults: iterative imputation choosing each column's learner.

    The plugin learns at transform time from the rows it is given (its fit keeps nothing), so new rows are imputed
    together with the training rows, and the training rows alone when they are what is imputed.
    """

    def __init__(self, seed):
        self.seed = seed

    def fit(self, X):
        self.train = X
        return self

    def transform(self, X):
        from hyperimpute.plugins.imputers import Imputers

        plugin = Imputers().get("hyperimpute", random_state=self.seed)
        same = X.shape == self.train.shape and np.array_equal(X, self.train, equal_nan=True)
        rows = X if same else np.concatenate([self.train, X])
        filled = np.asarray(plugin.fit_transform(_frame(rows)), dtype=np.float64)[len(rows) - len(X) :]
        return np.where(np.isnan(X), filled, X)


def classifier():
    """Returns the fixed downstream classifier."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def multiple_accuracy(imputer, X_train, y_train, X_test, y_test):
    """Returns the accuracy of the classifier trained on M imputations stacked, averaged over M test imputations."""
    train = np.concatenate(imputer.sample(X_train, MULTIPLE))
    model = classifier().fit(train, np.tile(y_train, MULTIPLE))
    proba = np.mean([model.predict_proba(t) for t in imputer.sample(X_test, MULTIPLE)], axis=0)
    return float((model.classes_[proba.argmax(1)] == y_test).mean())


def run_one(name, load, mechanism, rate, seed, quick, skip=()):
    """Returns one row of results per imputer for one dataset, setting and seed, leaving out the methods `skip`."""
    X, y = load(return_X_y=True)
    if quick:
        X, y = X[:150], y[:150]
    X = X.astype(np.float64)
    mask = ampute(X, rate, mechanism, seed=seed)
    train, test = train_test_split(np.arange(len(X)), test_size=0.3, stratify=y, random_state=seed)
    incomplete = np.where(mask, np.nan, X)
    scale = np.where(X[train].std(0) > 0, X[train].std(0), 1.0)  # digits has blank border pixels
    rows = []
    for method, imputer in imputers(quick, seed, mechanism).items():
        if method in skip:
            continue
        start = time.perf_counter()
        imputer.fit(incomplete[train])
        fitted = time.perf_counter()
        filled_train, filled_test = imputer.transform(incomplete[train]), imputer.transform(incomplete[test])
        done = time.perf_counter()
        accuracy = float(classifier().fit(filled_train, y[train]).score(filled_test, y[test]))
        row = {
            "dataset": name,
            "mechanism": mechanism,
            "rate": rate,
            "seed": seed,
            "method": method,
            "missing": float(mask.mean()),
            "rmse": rmse_missing(X[test], filled_test, mask[test], scale),
            "accuracy": accuracy,
            "fit_s": fitted - start,
            "transform_s": done - fitted,
            "machine": BENCH["machine_label"](),
        }
        if method.startswith("mivae"):
            row["accuracy_multiple"] = multiple_accuracy(
                imputer, incomplete[train], y[train], incomplete[test], y[test]
            )
            row["epochs"] = len(imputer.history_.train_loss)
            row["spread"] = imputer.imputation_spread_  # under COLLAPSED: it imputed the columns' means in every row
        rows.append(row)
        print(
            f"{name:14s} {mechanism} {rate:.0%} seed {seed} {method:12s} rmse {row['rmse']:.4f} "
            f"acc {accuracy:.4f} fit {row['fit_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def summarise(rows):
    """Returns the Markdown table: mean (sd) over seeds of every score, per dataset, setting and method."""
    keys = sorted(
        {(r["dataset"], r["mechanism"], r["rate"]) for r in rows}, key=lambda k: (k[0], k[1] != "mcar", k[1], k[2])
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| dataset | missing | method | RMSE | accuracy | accuracy, M = 10 | fit s | transform s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        group = [r for r in rows if (r["dataset"], r["mechanism"], r["rate"]) == key]
        present = [m for m in methods if any(r["method"] == m for r in group)]
        best_rmse = min(np.mean([r["rmse"] for r in group if r["method"] == m]) for m in present)
        best_acc = max(np.mean([r["accuracy"] for r in group if r["method"] == m]) for m in present)
        floor = np.mean([r["rmse"] for r in group if r["method"] == "mean"]) if "mean" in present else np.inf
        for m in present:
            mine = [r for r in group if r["method"] == m]
            rmse, acc = [r["rmse"] for r in mine], [r["accuracy"] for r in mine]
            multi = [r["accuracy_multiple"] for r in mine if "accuracy_multiple" in r]
            collapsed = sum(r.get("spread") is not None and r["spread"] < COLLAPSED for r in mine)
            cells = [
                _cell(rmse, np.mean(rmse) == best_rmse)
                + (" ✗" if np.mean(rmse) > floor else "")
                + (f" ⊘{collapsed}" if collapsed else ""),
                _cell(acc, np.mean(acc) == best_acc),
                _cell(multi) if multi else "-",
                f"{np.mean([r['fit_s'] for r in mine]):.2f}",
                f"{np.mean([r['transform_s'] for r in mine]):.2f}",
            ]
            lines.append(f"| {key[0]} | {key[1].upper()} {key[2]:.0%} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins(rows):
    """Returns, per method, in how many settings its mean RMSE and its mean accuracy are the best (a tie counts for
    each)."""
    keys = {(r["dataset"], r["mechanism"], r["rate"]) for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    count = {m: [0, 0] for m in methods}
    mivae = 0  # settings where one of mivae's imputers has the best mean RMSE
    for key in keys:
        group = [r for r in rows if (r["dataset"], r["mechanism"], r["rate"]) == key]
        present = [m for m in methods if any(r["method"] == m for r in group)]
        rmse = {m: np.mean([r["rmse"] for r in group if r["method"] == m]) for m in present}
        acc = {m: np.mean([r["accuracy"] for r in group if r["method"] == m]) for m in present}
        for m in present:
            count[m][0] += rmse[m] == min(rmse.values())
            count[m][1] += acc[m] == max(acc.values())
        mivae += any(rmse[m] == min(rmse.values()) for m in present if m.startswith("mivae"))
    return len(keys), count, mivae


def _cell(values, best=False):
    text = f"{np.mean(values):.3f} ({np.std(values):.3f})" if len(values) > 1 else f"{values[0]:.3f}"
    return f"**{text}**" if best else text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 150 rows, 20 epochs: a check that it runs")
    parser.add_argument("--seeds", type=int, default=3, help="repetitions with new amputation and split (default: 3)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument(
        "--skip", default="", help="methods not to run now, separated by ';' (their rows are kept; names hold commas)"
    )
    parser.add_argument("--out", help="Markdown file (default: docs/tabular-benchmark.md, or none with --quick)")
    parser.add_argument("--json", help="raw results (default: benchmarks/tabular.json, or none with --quick)")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    for method, (package, install) in OPTIONAL.items():
        if not installed(method):
            print(f"{method} is left out: {package} is not installed ({install})", file=sys.stderr)
    names = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; known datasets are {', '.join(DATASETS)}")
    out = args.out or (None if args.quick else REPO / "docs" / "tabular-benchmark.md")
    raw = args.json or (None if args.quick else REPO / "benchmarks" / "tabular.json")
    command = "python benchmarks/tabular.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    # Finished (dataset, setting, seed, method) units are kept in the raw file as they finish: a rerun picks up there,
    # and runs only the methods a unit lacks (an imputer added since).
    rows = json.loads(Path(raw).read_text())["rows"] if raw and Path(raw).is_file() else []
    for name in names:
        for mechanism, rate in SETTINGS:
            for seed in range(seeds):
                unit = (name, mechanism, rate, seed)
                done = {r["method"] for r in rows if (r["dataset"], r["mechanism"], r["rate"], r["seed"]) == unit}
                skip = done | set(args.skip.split(";"))
                if set(imputers(args.quick, seed, mechanism)) <= skip:
                    continue
                rows += run_one(name, DATASETS[name], mechanism, rate, seed, args.quick, skip)
                if raw:
                    _write(
                        raw, json.dumps({"command": command, "date": date.today().isoformat(), "rows": rows}, indent=1)
                    )
    rows = [r for r in rows if r["dataset"] in names and r["seed"] < seeds]
    table = summarise(rows)
    print(table)
    if out:
        _write(out, _document(table, wins(rows), command, seeds, _machines(rows) + _gaps(rows)))
    return rows


def _write(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _machines(rows):
    """The sentence naming where the rows were measured: rows are kept across runs, which may be on other machines."""
    found = {}
    for r in rows:
        found.setdefault(r.get("machine", "a 2-core machine not recorded in the rows"), set()).add(r["method"])
    if len(found) == 1:
        return f"Every row was measured on {next(iter(found))}."
    parts = [f"{', '.join(sorted(methods))} on {name}" for name, methods in found.items()]
    return "Rows are kept across runs, so they come from more than one machine: " + "; ".join(parts) + "."


def _gaps(rows):
    """The sentences naming the datasets where a method has no rows (a run that left it out), and mivae's rows
    measured before the imputations' spread was recorded, or none."""
    missing = BENCH["not_run"](rows, "dataset")
    text = f" Not run: {missing}; those settings are decided without it." if missing else ""
    unmeasured: dict[str, dict[str, None]] = {}  # method: the datasets (in order, once each)
    for r in rows:
        if r["method"].startswith("mivae") and "spread" not in r:
            unmeasured.setdefault(r["method"], {})[r["dataset"]] = None
    if unmeasured:
        listed = "; ".join(f"{m} on {', '.join(datasets)}" for m, datasets in unmeasured.items())
        text += f" The imputations' spread (⊘) was not recorded for {listed}: they were measured before it was."
    return text


def _document(table, won, command, seeds, machines=""):
    settings, count, mivae = won
    tally = "; ".join(f"{m} {c[0]} and {c[1]}" for m, c in count.items())
    absent = [f"{m} (not installed: `{OPTIONAL[m][1]}`)" for m in OPTIONAL if m not in count]
    return f"""# Tabular benchmark

**Best mean RMSE and best mean single-imputation accuracy, in how many of the {settings} settings:**
{tally}. One of mivae's imputers has the best mean RMSE in **{mivae} of the {settings}** settings.
{"Left out of this run: " + ", ".join(absent) + "." if absent else ""}

Made by `{command}` on {date.today().isoformat()} (2 CPU cores, no GPU); raw results in `benchmarks/tabular.json`.
Protocol in the script's docstring: each table amputed (MCAR, MAR logistic on 10 % always-observed columns, MNAR
self-masking), split 70/30 stratified, imputers fitted on the incomplete training rows. RMSE is on the missing test
entries in units of each column's training standard deviation; accuracy is a standardised logistic regression
trained on the imputed training rows and tested on the imputed test rows; "M = 10" trains it on 10 imputations
stacked and averages its probabilities over 10 imputations of each test row. Each cell is the mean (standard
deviation) over {seeds} seeds, each a new amputation and split; the best mean per setting is bold, and ✗ marks a
mean RMSE above the column mean's: that imputer did worse there than filling in each column's mean (at MCAR 80 % many
do; elsewhere it is a failure of that imputer, whatever its other scores). ⊘k marks a mivae imputer that in k of the
seeds imputed nearly the same value in every row, as the columns' means would (its `imputation_spread_` under
{COLLAPSED}; fit warns of it): a training that stopped on the plateau where the model learns the columns' means alone,
a failure of that fit, not a finding about the model. scikit-learn's
imputers run on standardised columns; IterativeImputer has 10 rounds, KNNImputer 5 neighbours; missForest is
IterativeImputer with a random forest of 100 trees over the square root of the features at each split (missForest's
own settings), 10 rounds; miceforest runs 5 rounds of LightGBM with its defaults; HyperImpute its `hyperimpute`
plugin with its defaults, which learns from the rows it imputes (test rows are imputed together with the training
rows; pandas 2.3.3, as it needs). mivae's imputers use their defaults (500 epochs at most, early stopping on 10 % of
the training rows; MIWAE with K = 20), on one CPU thread. {machines} In the MNAR settings not-MIWAE runs as
`NotMIWAEImputer()`, which learns in which direction each column's values go missing, and told that high values do
(`missingness="self-masking-high"`), which is true of this amputation. `mivae miwae, linear` and `mivae not-miwae,
high, linear` have probabilistic PCA's linear decoder (`decoder="linear"`), which learns more slowly than the MLP:
3,000 epochs at most, patience 300, no step budget. With it MIWAE's model of these tables of numbers is Gaussian:
it is fitted by the exact log-likelihood of the observed entries, and its imputations are the exact Gaussian
conditional (mean and draws), not importance-sampled. `mivae miwae, min scale 1` floors the scales of its
continuous heads at one standard deviation (`min_scale=1`; the default floor is 1e-3), where digits' pixels, which
repeat values exactly, otherwise draw the model onto them; it trains longer, as its bound rises slowly at first (2,000
epochs at most, patience 200). `mivae miwae, {ENSEMBLE} models` is an ensemble of {ENSEMBLE} default MIWAEs
(`n_models={ENSEMBLE}`), each from a start of its own and holding out rows of its own: its single imputation is the
mean of theirs, and its multiple imputations come from each in turn; `mivae miwae, student-t, {ENSEMBLE} models` is the
same with Student-t heads for the continuous columns (`likelihood="student-t"`, as the MIWAE paper's UCI tables).
Both were chosen on amputations of seeds of their own, not these. Times are wall seconds of one process; other
work shared the machine's second core during the run, so read them as orders of magnitude.

{table}
"""


if __name__ == "__main__":
    main()

"""The `mivae` command: a thin layer over the public Python API.

Every command takes --seed; errors a user can fix are one sentence on stderr and exit
status 2.
"""

import argparse
import sys
from pathlib import Path

from mivae import __version__
from mivae.artifacts import check_writable_folder, remove_stale_temporaries
from mivae.errors import MivaeError, check_interrupt, forget_interrupt, request_interrupt

EXIT_USAGE = 2
DEVICE_HELP = "cpu, cuda, cuda:N, or auto: the GPU where torch sees one, else the CPU (default: auto)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one sentence, like every other mivae error."""

    def error(self, message):
        raise MivaeError(f"{message} (see '{self.prog} --help').")


def _levels(text):
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes numbers separated by commas, like 0.5,0.7,0.9; got {text!r}") from None
    if not levels:
        raise argparse.ArgumentTypeError("needs at least one level")
    return levels


def _names(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_data_options(parser):
    from mivae.images.data import DATASETS

    parser.add_argument("--dataset", default="mnist", choices=DATASETS, help="dataset (default: mnist)")
    parser.add_argument("--data-dir", help="folder holding the dataset's files (default: $MIVAE_DATA_DIR, then the user cache)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the corruption (default: 0)")


def build_parser():
    """Returns the argument parser of the `mivae` command."""
    parser = _Parser(prog="mivae", description="Classification of data with missing values by deep generative imputation.")
    parser.add_argument("--version", action="version", version=f"mivae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    data = commands.add_parser("data", help="inspect and fetch datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    data_commands.required = True
    info = data_commands.add_parser("info", help="dataset, split sizes and class counts per split")
    _add_data_options(info)
    info.set_defaults(run=_data_info)
    fetch = data_commands.add_parser("fetch", help="download the dataset's files if absent and verify them")
    _add_data_options(fetch)
    fetch.set_defaults(run=_data_fetch)

    from mivae.images.corruption import FILL_POLICIES, METHODS

    corrupt = commands.add_parser(
        "corrupt",
        help="draw an image and its corrupted versions (thesis Figures 4, 9, 13)",
        description="Draws test images and their corrupted versions, one column per (method, level). "
        "Figure 4: --method random-pixels,vertical-lines --levels 0.5; "
        "Figure 9: --method random-pixels --levels 0.5,0.7,0.9; "
        "Figure 13: --method vertical-lines --levels 0.5,0.7,0.9.",
    )
    corrupt.add_argument("--method", type=_names, required=True, help=f"comma-separated methods: {', '.join(METHODS)}")
    corrupt.add_argument("--levels", type=_levels, required=True, help="comma-separated corruption levels in [0, 1)")
    corrupt.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")
    corrupt.add_argument("--index", type=_indices, default=[0], help="comma-separated test image indices, one row each (default: 0)")
    corrupt.add_argument("--fill", default="white", choices=FILL_POLICIES, help="what a missing pixel shows (default: white, as the thesis)")
    corrupt.add_argument("--exact", action="store_true", help="exactly round(cl * p) distinct pixels or columns missing")
    _add_data_options(corrupt)
    corrupt.set_defaults(run=_corrupt)

    from mivae.config import INITS
    from mivae.hardware import PRECISIONS
    from mivae.models import KINDS, SEARCHABLE

    train = commands.add_parser(
        "train",
        help="train a VAE, a Type 1 or a Type 2 classifier and save it to a run directory",
        description="Trains one model on corrupted data, with early stopping on the validation set, and saves it "
        "with its configuration, history and metrics. Settings come from --config (TOML or JSON with [data], "
        "[model] and [train] tables) and the flags below, flags winning.",
    )
    train.add_argument("kind", choices=KINDS, help="what to train")
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--config", help="TOML or JSON file with [data], [model] and [train] tables")
    train.add_argument("--vae", help="run directory of the trained imputer: a vae (vae+mlp, vae+cnn), miwae or not-miwae run")
    _add_problem_flags(train)
    model_flags = train.add_argument_group("model (each applies to the kinds named)")
    model_flags.add_argument("--hidden", help="nodes per hidden layer, comma-separated (vae, mlp)")
    model_flags.add_argument("--latent", type=int, help="latent dimension L (vae)")
    model_flags.add_argument("--lr", type=float, help="learning rate: Adam (vae), AdaDelta (classifiers)")
    model_flags.add_argument("--l2", type=float, help="coefficient of the squared weights in the loss")
    model_flags.add_argument("--plain", dest="denoising", action="store_const", const=False, help="a plain VAE: reconstruct the corrupted input (vae)")
    model_flags.add_argument("--mask-input", dest="mask_input", action="store_const", const=True,
                             help="mask-aware: see zero-filled values and the mask, never a fill value (vae, mlp, cnn)")
    model_flags.add_argument("--init", choices=INITS, help="weight initialisation: glorot (Keras' default, the thesis' "
                             "framework; the default of vae and cnn) or torch (PyTorch's; the default of mlp) (vae, mlp, cnn)")
    model_flags.add_argument("--importance-samples", dest="samples", type=int, help="K, importance samples per image in training (miwae, not-miwae)")
    model_flags.add_argument("--refine", type=int, help="channels of the local refinement network, 0 for none (miwae)")
    model_flags.add_argument("--holdout", type=float, help="fraction of observed pixels held out to train the refinement (miwae)")
    model_flags.add_argument("--holdout-shape", choices=("pixels", "columns"), help="hold out single pixels or whole columns (miwae)")
    model_flags.add_argument("--dense", type=int, help="nodes of the dense layer (cnn)")
    model_flags.add_argument("--dropout-conv", type=float, help="dropout before the dense layer (cnn)")
    model_flags.add_argument("--dropout-dense", type=float, help="dropout after the dense layer (cnn)")
    _add_fit_flags(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="test a trained run on its corrupted test set")
    evaluate.add_argument("run_dir", help="run directory written by 'mivae train'")
    evaluate.add_argument("--samples", type=_indices, default=[1, 10, 100, 1000], help="numbers of samples M for multiple imputation (default: 1,10,100,1000)")
    evaluate.add_argument("--vae", help="VAE run: classify one imputation too (classifiers trained with --clean-train)")
    evaluate.add_argument("--data-dir", help="folder holding the dataset's files")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default: 0)")
    evaluate.add_argument("--precision", choices=PRECISIONS, default="auto", help="matmul precision (default: auto, bf16 where native)")
    evaluate.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(run=_evaluate)

    search = commands.add_parser(
        "search",
        help="select a model by random search (thesis §3.5), retrain the best on train + validation, test it once",
        description="Random search with Optuna: every trial trains with early stopping on the validation set; the best "
        "configuration (lowest validation negative ELBO for vae, highest validation accuracy otherwise) is retrained on "
        "train + validation for its best epoch count and tested once. The study is kept in OUT/study.db (or --storage), "
        "so an interrupted search continues with --resume, and any number of workers can share a --storage database.",
    )
    search.add_argument("kind", nargs="?", choices=SEARCHABLE, help="what to select")
    search.add_argument("--show-space", action="store_true", help="print the search spaces and their reasons, then exit")
    search.add_argument("--out", help="search directory: study, search.json and the final run in final/")
    search.add_argument("--trials", type=int, default=100, help="trials in the whole study, all workers together (default: 100)")
    search.add_argument("--layers", type=_indices, default=[2, 3, 4], help="hidden-layer counts of an MLP, comma-separated; one study each, the best of all retrained (default: 2,3,4, as §3.5)")
    search.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    search.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db (default: OUT/study.db)")
    search.add_argument("--study", help="study name (default: from kind, dataset, corruption, level and seed)")
    search.add_argument("--resume", action="store_true", help="continue an existing study")
    search.add_argument("--search-seed", type=int, default=0, help="seed of the random draws (default: 0)")
    search.add_argument("--config", help="TOML or JSON file with [data] and [train] tables")
    search.add_argument("--vae", help="run directory of the selected VAE, retrained on train + validation (vae+mlp, vae+cnn)")
    _add_problem_flags(search)
    _add_fit_flags(search)
    search.set_defaults(run=_search)

    _add_study_commands(commands)
    _add_table_commands(commands)
    return parser


def _add_table_commands(commands):
    impute = commands.add_parser(
        "impute",
        help="fill the missing entries of a CSV or Parquet table: M completed tables",
        description="Fits a VAE on the observed entries of a table (CSV or Parquet, empty cells missing) and writes "
        "--samples completed tables to --out, each with the input's columns in the input's order: OUT/STEM.imputed-K.EXT. "
        "Numeric columns are continuous, text and true/false columns categorical, unless declared otherwise.",
    )
    impute.add_argument("data", help="the table: .csv, .tsv or .parquet")
    impute.add_argument("--out", required=True, help="folder for the completed tables")
    impute.add_argument("--samples", type=int, default=10, help="M, the number of completed tables (default: 10)")
    impute.add_argument("--single", action="store_true", help="also write the single best imputation, OUT/STEM.single.EXT")
    impute.add_argument("--format", choices=("csv", "parquet"), help="output format (default: that of the input)")
    _add_table_model_flags(impute)
    impute.set_defaults(run=_impute)

    classify = commands.add_parser(
        "classify",
        help="cross-validate a classifier over multiple imputations of a table with missing values",
        description="Predicts --target from the other columns of a table with missing entries: in each fold a VAE is "
        "fitted on the training rows, a logistic regression on --samples imputations of them, and test rows are "
        "classified by the mean of its probabilities over --samples imputations. Prints the accuracy per fold beside a "
        "baseline's: the same logistic regression on the column means and modes, on the same folds.",
    )
    classify.add_argument("data", help="the table: .csv, .tsv or .parquet")
    classify.add_argument("--target", required=True, help="the column to predict; it must have no missing entry")
    classify.add_argument("--folds", type=int, default=5, help="cross-validation folds, stratified (default: 5)")
    classify.add_argument("--samples", type=int, default=10, help="M, imputations per row (default: 10)")
    classify.add_argument("--indicator", action="store_true", help="also give the classifier the missingness mask")
    _add_table_model_flags(classify)
    classify.set_defaults(run=_classify)


def _add_table_model_flags(parser):
    from mivae.models.tabular import LIKELIHOODS

    parser.add_argument("--model", default="miwae", choices=("miwae", "vae"), help="the imputer: MIWAE "
                        "(importance-weighted, the default) or the VAE of the thesis on the masked ELBO")
    parser.add_argument("--categorical", type=_names, default=[], help="comma-separated columns to treat as categorical")
    parser.add_argument("--continuous", type=_names, default=[], help="comma-separated columns that must hold numbers")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian", help="distribution of continuous "
                        "columns (default: gaussian)")
    parser.add_argument("--epochs", type=int, default=500, help="most training epochs (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the imputations (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (the GPU where torch sees one); "
                        "default: cpu, where a table's small matrices run fastest")


def _table_imputer(args, categorical):
    from mivae.tables.estimators import MIWAEImputer, VAEImputer

    if args.epochs < 1:
        raise MivaeError(f"--epochs must be at least 1; got {args.epochs}.")
    overlap = set(args.categorical) & set(args.continuous)
    if overlap:
        raise MivaeError(f"column {sorted(overlap)[0]!r} is declared both categorical and continuous.")
    model = MIWAEImputer if args.model == "miwae" else VAEImputer
    return model(categorical=categorical or None, likelihood=args.likelihood, max_epochs=args.epochs, random_state=args.seed,
                 device=args.device)


def _api_errors(action):
    """Runs `action` and returns its result; ValueError and TypeError from the Python API become one-sentence errors."""
    try:
        return action()
    except MivaeError:
        raise
    except (ValueError, TypeError) as e:
        raise MivaeError(str(e).strip().splitlines()[0]) from None


def _notes(caught):
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)


def _impute(args):
    import time
    import warnings

    from mivae.tables.io import read_table, table_format, write_table

    if args.samples < 1:
        raise MivaeError(f"--samples must be at least 1; got {args.samples}.")
    data = Path(args.data)
    ext = {"csv": ".csv", "parquet": ".parquet"}[args.format or table_format(data)]
    frame = read_table(data, args.categorical, args.continuous)
    out = Path(args.out)
    check_writable_folder(out)  # before training: a folder that cannot take the tables should not cost a fit
    imputer = _table_imputer(args, [c for c in args.categorical if c in frame.columns])
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        _api_errors(lambda: imputer.fit(frame))
    trained = time.perf_counter() - start
    _notes(caught)
    tables = _api_errors(lambda: imputer.sample(frame, args.samples))
    kinds = [c.kind for c in imputer.schema_.columns]
    print(f"{data.name}: {len(frame)} rows, {kinds.count('continuous')} continuous and {kinds.count('categorical')} "
          f"categorical columns, {frame.isna().to_numpy().mean():.1%} of entries missing")
    print(f"{args.model} trained {len(imputer.history_.train_loss)} epochs (best {imputer.history_.best_epoch}) "
          f"in {trained:.1f}s")
    digits = len(str(args.samples))
    for k, table in enumerate(tables, 1):
        write_table(table, out / f"{data.stem}.imputed-{k:0{digits}d}{ext}")
    if args.single:
        write_table(_api_errors(lambda: imputer.transform(frame)), out / f"{data.stem}.single{ext}")
    print(f"wrote {args.samples} completed tables{' and the single imputation' if args.single else ''} to {out}")


def _classify(args):
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_validate

    from mivae.tables.estimators import MultipleImputationClassifier
    from mivae.tables.io import read_table

    if args.samples < 1:
        raise MivaeError(f"--samples must be at least 1; got {args.samples}.")
    if args.folds < 2:
        raise MivaeError(f"--folds must be at least 2; got {args.folds}.")
    frame = read_table(args.data, [c for c in args.categorical if c != args.target], args.continuous)
    if args.target not in frame.columns:
        raise MivaeError(f"target column {args.target!r} is not in {args.data}, whose columns are {', '.join(frame.columns)}.")
    y = frame.pop(args.target)
    if y.isna().any():
        raise MivaeError(f"target column {args.target!r} is missing in {int(y.isna().sum())} of {len(y)} rows; "
                         "a target must be complete.")
    if frame.shape[1] == 0:
        raise MivaeError(f"{args.data} has no column besides the target {args.target!r} to predict it from.")
    counts = y.value_counts()
    if len(counts) < 2:
        raise MivaeError(f"target column {args.target!r} holds only the class {counts.index[0]!r}; it needs two or more.")
    if counts.min() < args.folds:
        raise MivaeError(f"--folds {args.folds} needs at least {args.folds} rows of every class, but class "
                         f"{counts.idxmin()!r} has {counts.min()}.")
    labels = y.astype(str) if y.dtype == object else y
    model = MultipleImputationClassifier(_table_imputer(args, [c for c in args.categorical if c in frame.columns]),
                                         n_imputations=args.samples, add_indicator=args.indicator, random_state=args.seed)
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        scores = _api_errors(lambda: cross_validate(model, frame, labels, cv=folds, error_score="raise")["test_score"])
    _notes({str(w.message): w for w in caught}.values())
    baseline = _baseline_classifier(frame, [c for c in args.categorical if c in frame.columns], args.indicator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # an all-missing column is noted above already
        try:
            base_scores = cross_validate(baseline, frame, labels, cv=folds, error_score="raise")["test_score"]
        except ValueError as e:   # the comparison is a courtesy: its failure is reported, not fatal
            base_scores, why = [np.nan] * args.folds, str(e).split("\n")[0]
    print(f"{Path(args.data).name}: predicting {args.target!r} ({len(counts)} classes) from {frame.shape[1]} columns, "
          f"{len(frame)} rows, {frame.isna().to_numpy().mean():.1%} of entries missing")
    for k, (score, base) in enumerate(zip(scores, base_scores), 1):
        print(f"fold {k}: accuracy {score:.4f} (baseline {base:.4f})")
    print(f"accuracy {np.mean(scores):.4f} +- {np.std(scores, ddof=1):.4f} over {args.folds} folds "
          f"(M = {args.samples}, {args.model})")
    if np.isnan(base_scores).any():
        print(f"baseline: none, since the same classifier on the column means and modes failed: {why}")
    else:
        print(f"baseline {np.mean(base_scores):.4f} +- {np.std(base_scores, ddof=1):.4f}: the same classifier on the "
              "column means and modes, on the same folds")


def _baseline_classifier(frame, categorical, indicator):
    """Returns the classifier `mivae classify` compares with: a logistic regression on each continuous column's
    mean and standardised, each categorical column's mode and one-hot, fitted within each fold."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mivae.tables.schema import CATEGORICAL, infer_kinds

    kinds = dict(zip(frame.columns, infer_kinds(frame, categorical)))
    continuous = [c for c, kind in kinds.items() if kind != CATEGORICAL]
    labels = [c for c, kind in kinds.items() if kind == CATEGORICAL]
    parts = [("continuous", make_pipeline(SimpleImputer(add_indicator=indicator), StandardScaler()), continuous),
             ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent", add_indicator=indicator),
                                           OneHotEncoder(handle_unknown="ignore")), labels)]
    return make_pipeline(ColumnTransformer([part for part in parts if part[2]]), LogisticRegression(max_iter=1000))


def _add_study_commands(commands):
    from mivae.study.reproduce import PRESETS

    reproduce = commands.add_parser(
        "reproduce",
        help="re-run the thesis' whole study (§4) and write the report beside the thesis' numbers",
        description="Runs the whole study of §4: both corruption methods at 50, 70 and 90 %, Type 1 and Type 2 "
        "classifiers selected by random search, single and multiple imputation, Tables 1-7 and Figures 4, 8-16. "
        "Every trained model and result is kept in --out under a key of its configuration: running the same "
        "command again reuses them, and an interrupted run continues where it stopped. Presets: "
        + "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items()) + ".",
    )
    reproduce.add_argument("--preset", default="smoke", help=f"{', '.join(PRESETS)} (default: smoke)")
    reproduce.add_argument("--out", help="run directory (default: out/reproduce-PRESET)")
    reproduce.add_argument("--data-dir", help="folder holding the dataset's files (default: $MIVAE_DATA_DIR, then the user cache)")
    reproduce.add_argument("--seed", type=int, default=0, help="seed of the split, corruption, searches and training (default: 0)")
    reproduce.add_argument("--storage", help="Optuna storage URL shared by a fleet of workers, such as postgresql://host/db")
    reproduce.add_argument("--limit", type=int, help="use only the first LIMIT images of each split (a quick look)")
    reproduce.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")
    reproduce.add_argument("--device", default="auto", help=DEVICE_HELP)
    reproduce.add_argument("--settings", help="run only these settings, comma-separated: rp50, rp70, rp90 (Random Pixels), "
                           "vl50, vl70, vl90 (Vertical Lines), or all (default: all)")
    reproduce.add_argument("--thesis-only", action="store_true", help="skip the beyond-the-thesis stage")
    reproduce.set_defaults(run=_reproduce)

    report = commands.add_parser("report", help="rebuild the report of a reproduce run from its results, without training")
    report.add_argument("run_dir", help="run directory written by 'mivae reproduce'")
    report.set_defaults(run=_report)


def _reproduce(args):
    import optuna

    from mivae.study.reproduce import PRESETS, parse_settings, reproduce
    from mivae.hardware import resolve_device
    from mivae.study.report import build_report

    if args.preset not in PRESETS:
        raise MivaeError(f"unknown preset {args.preset!r}; known presets are {', '.join(PRESETS)}.")
    settings = parse_settings(args.settings)
    if args.limit is not None and args.limit < 1:
        raise MivaeError(f"--limit must be at least 1; got {args.limit}.")
    _set_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or f"out/reproduce-{args.preset}")
    study = reproduce(args.preset, out, seed=args.seed, data_dir=args.data_dir, storage=args.storage, limit=args.limit,
                      progress=True, settings=settings, beyond_stage=not args.thesis_only,
                      device=str(resolve_device(args.device)))
    reused = sum(1 for _, _, r in study.done if r)
    print(f"{len(study.done)} trained units, {reused} reused from earlier runs.")
    print(f"report: {build_report(out)}")


def _report(args):
    from mivae.study.report import build_report

    print(f"report: {build_report(args.run_dir)}")


def _add_problem_flags(parser):
    """Flags of DataConfig: which data, corrupted how."""
    from mivae.images.corruption import METHODS
    from mivae.images.data import DATASETS
    from mivae.images.problem import FILLS

    flags = parser.add_argument_group("data")
    flags.add_argument("--dataset", choices=DATASETS, help="dataset (default: mnist)")
    flags.add_argument("--data-dir", help="folder holding the dataset's files")
    flags.add_argument("--corruption", dest="method", choices=METHODS, help="corruption method (default: random-pixels)")
    flags.add_argument("--level", type=float, help="corruption level in [0, 1) (default: 0.5)")
    flags.add_argument("--fill", choices=FILLS, help="what a model sees in a missing pixel: a constant, the pixel means, "
                       "or scikit-learn's IterativeImputer or KNNImputer (default: white)")
    flags.add_argument("--exact", action="store_const", const=True, help="exactly round(cl * p) missing units")
    flags.add_argument("--clean-train", action="store_const", const=True, help="train and validate on clean images (Tables 6, 7)")
    flags.add_argument("--limit", type=int, help="use only the first LIMIT images of each split")
    flags.add_argument("--seed", type=int, help="seed of the split, the corruption and the training (default: 0)")


def _add_fit_flags(parser):
    """Flags of TrainConfig: how a model is fitted."""
    from mivae.hardware import PRECISIONS

    flags = parser.add_argument_group("training")
    flags.add_argument("--epochs", type=int, help="most epochs (default: 50)")
    flags.add_argument("--patience", type=int, help="early-stopping patience in epochs (default: 5)")
    flags.add_argument("--min-epochs", type=int, help="epochs before early stopping may end training (default: 10)")
    flags.add_argument("--min-delta", type=float,
                       help="least gain in the validation score that resets the patience (default: 0)")
    flags.add_argument("--batch-size", type=int, help="images per step (default: 128)")
    flags.add_argument("--device", help=DEVICE_HELP)
    flags.add_argument("--precision", choices=PRECISIONS, help="matmul precision (default: auto, bf16 where native)")
    flags.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")


def _resolve(args, tables, model_cls=None):
    """Returns (data, model, train) configs: file tables first, flags over them; model is None without model_cls."""
    from mivae import config as cfg

    allowed = {"data", "model", "train"} if model_cls else {"data", "train"}
    unknown = sorted(set(tables) - allowed)
    if unknown:
        raise MivaeError(f"unknown table [{unknown[0]}] in {args.config}; expected {' and '.join(f'[{t}]' for t in sorted(allowed))}.")
    data = cfg.from_dict(cfg.DataConfig, tables.get("data", {}), "data")
    data = cfg.replace(data, **{k: getattr(args, k) for k in ("dataset", "method", "level", "fill", "exact", "clean_train", "limit", "seed")})
    train = cfg.from_dict(cfg.TrainConfig, tables.get("train", {}), "train")
    fit_flags = ("epochs", "patience", "min_epochs", "min_delta", "batch_size", "device", "precision", "seed")
    train = cfg.replace(train, **{k: getattr(args, k) for k in fit_flags})
    model = cfg.from_dict(model_cls, tables.get("model", {}), "model") if model_cls else None
    return data, model, train


def _indices(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes whole numbers separated by commas; got {text!r}") from None


def _data_info(args):
    from mivae.images.data import load_splits

    splits = load_splits(args.dataset, args.data_dir, seed=args.seed)
    print(f"dataset {splits.dataset}: {sum(len(s) for s in splits)} images of {splits.train.images.shape[1]}x{splits.train.images.shape[2]} pixels, {splits.n_classes} classes, split seed {args.seed}")
    print(f"{'split':<6} {'images':>7}  " + " ".join(f"{c:>5}" for c in range(splits.n_classes)))
    for split in splits:
        print(f"{split.name:<6} {len(split):>7}  " + " ".join(f"{n:>5}" for n in split.class_counts(splits.n_classes)))


def _data_fetch(args):
    from mivae.images.data import load_idx_dataset, resolve_data_dir

    if args.dataset == "digits":
        print("digits ships with scikit-learn; nothing to fetch.")
        return
    train, test = load_idx_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset}: {len(train)} training and {len(test)} test images verified in {resolve_data_dir(args.dataset, args.data_dir)}")


def _corrupt(args):
    import numpy as np

    from mivae.images.corruption import check_level, check_method, corrupt, fill, pixel_means
    from mivae.images.data import load_splits
    from mivae.images.figures import check_figure_path, image_grid

    check_figure_path(args.out)
    check_writable_folder(Path(args.out).parent)
    if not args.index:
        raise MivaeError("--index needs at least one test image index.")
    methods = [check_method(m) for m in args.method]
    levels = [check_level(level) for level in args.levels]
    splits = load_splits(args.dataset, args.data_dir, seed=args.seed)
    test = splits.test
    bad = [i for i in args.index if not 0 <= i < len(test)]
    if bad:
        raise MivaeError(f"--index {bad[0]} is outside the test set, which has images 0 to {len(test) - 1}.")
    titles = ["original"]
    columns = [test.images[args.index]]
    for method in methods:
        for level in levels:
            # Image i's mask does not depend on how many images are corrupted: the shown prefix suffices.
            corrupted = corrupt(test.images[: max(args.index) + 1], method, level, seed=args.seed, split="test", exact=args.exact)
            means = None
            if args.fill == "mean":
                means = pixel_means(corrupt(splits.train.images, method, level, seed=args.seed, split="train", exact=args.exact))
            shown = fill(corrupted, args.fill, means)[args.index]
            titles.append(f"{method.replace('-', ' ')} {level:.0%}\n({np.isnan(corrupted.values[args.index]).mean():.0%} missing)")
            columns.append(shown)
    rows = [[column[r] for column in columns] for r in range(len(args.index))]
    image_grid(rows, titles, args.out)
    print(f"wrote {args.out}")


def _set_threads(threads):
    """Sets the CPU thread count once: as given, else the fastest count measured on this machine; and keeps the
    heap from fragmenting over a long run (hardware.steady_heap)."""
    import torch

    from mivae.hardware import measure_threads, steady_heap

    if threads is not None and threads < 1:
        raise MivaeError(f"--threads must be at least 1; got {threads}.")
    torch.set_num_threads(threads or measure_threads())
    steady_heap()


def _train(args):
    from mivae import config as cfg
    from mivae.models import CONFIGS, classifier_kind
    from mivae.images.pipeline import train_model
    from mivae.images.runs import load_run, save_run

    check_writable_folder(args.out)
    _set_threads(args.threads)
    tables = cfg.read_config_file(args.config) if args.config else {}
    model_cls = CONFIGS[classifier_kind(args.kind)]
    data, model, train = _resolve(args, tables, model_cls)
    flags = {k: getattr(args, k) for k in ("hidden", "latent", "lr", "l2", "denoising", "mask_input", "init", "samples",
                                           "refine", "holdout", "holdout_shape", "dense", "dropout_conv", "dropout_dense")}
    for name, value in flags.items():
        if value is not None and name not in model_cls.__dataclass_fields__:
            flag = {"denoising": "--plain", "samples": "--importance-samples"}.get(name, f"--{name.replace('_', '-')}")
            raise MivaeError(f"{flag} does not apply to {args.kind} models.")
    model = cfg.replace(model, **flags)
    vae_run = load_run(args.vae) if args.vae else None

    def progress(epoch, history):
        score = f"  val {history.val_score[-1]:.4f}" if history.val_score else ""
        print(f"epoch {epoch:>3}/{train.epochs}  train loss {history.train_loss[-1]:.4f}{score}  {history.seconds[-1]:.1f}s", flush=True)

    run = train_model(args.kind, data, model, train, args.data_dir, vae_run=vae_run, on_epoch=progress)
    save_run(run, args.out)
    numbers = {k: v for k, v in run.metrics.items() if isinstance(v, float)}
    print(f"best epoch {run.history.best_epoch}; " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
    if "health" in run.metrics:
        print(health_line(run.metrics["health"]))
    print(f"saved {args.out}")


def health_line(health):
    """The printable verdict of a health check (mivae.health)."""
    seen = " (on validation images it was retrained on)" if health.get("held_out") is False else ""
    return f"health check{seen}: {'passed' if health['ok'] else 'FAILED'}: {health['reason']}"


def _evaluate(args):
    from mivae.hardware import resolve_device
    from mivae.images.pipeline import evaluate_run
    from mivae.images.runs import load_run, write_json

    _set_threads(args.threads)
    if not args.samples or min(args.samples) < 1:
        raise MivaeError(f"--samples must be whole numbers of at least 1, like 1,10,100; got {args.samples or 'none'}.")
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    vae_run = load_run(args.vae, device) if args.vae else None
    result = evaluate_run(run, args.samples, args.data_dir, vae_run=vae_run, seed=args.seed, precision=args.precision)
    print(format_evaluation(result))
    try:
        write_json(Path(args.run_dir) / "evaluation.json", result)
    except OSError as e:
        raise MivaeError(f"cannot write {Path(args.run_dir) / 'evaluation.json'}: {e.strerror or e}.") from None


def _search(args):
    import optuna
    from tqdm.auto import tqdm

    from mivae import config as cfg
    from mivae.images.runs import load_run
    from mivae.study.search import describe_spaces, search, spends_budget

    if args.show_space:
        print(describe_spaces())
        return
    if args.kind is None or args.out is None:
        raise MivaeError("mivae search needs a KIND and --out, or --show-space.")
    if args.trials < 1:
        raise MivaeError(f"--trials must be at least 1; got {args.trials}.")
    if not args.layers or not set(args.layers) <= {2, 3, 4}:
        raise MivaeError(f"--layers takes 2, 3 or 4, comma-separated; got {args.layers or 'none'}.")
    check_writable_folder(args.out)
    remove_stale_temporaries(args.out)   # left by a search killed mid-write
    _set_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tables = cfg.read_config_file(args.config) if args.config else {}
    data, _, train = _resolve(args, tables)
    vae_run = load_run(args.vae) if args.vae else None
    if args.kind.startswith("vae+") and vae_run is None:
        raise MivaeError(f"a {args.kind} search trains on a VAE's imputations; pass --vae with the selected VAE's final run.")
    studies = len(args.layers) if args.kind.removeprefix("vae+") == "mlp" else 1
    bar = tqdm(total=args.trials * studies, desc=f"search {args.kind}", unit="trial", disable=None)
    done_before = {}

    def progress(study):
        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and spends_budget(t)]
        done_before[study.study_name] = min(len(finished), args.trials)
        bar.n = sum(done_before.values())
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            bar.set_postfix_str(f"best {study.best_value:.4f}")
        bar.refresh()

    try:
        result = search(args.kind, data, args.trials, args.out, train, storage=args.storage, study_name=args.study,
                        seed=args.search_seed, resume=args.resume, timeout=args.timeout, vae_run=vae_run,
                        layers=tuple(args.layers), data_dir=args.data_dir, on_trial=progress)
    finally:
        bar.close()
    print(f"best configuration (trial value {result.best_value:.4f}, best epoch {result.best_epoch}): {result.best_params}")
    print("retrained on train + validation; test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items()))
    if result.health is not None:
        print(health_line(result.health))
    print(f"saved {result.run_dir} and {Path(args.out) / 'search.json'}")


def format_evaluation(result):
    """Returns the printable summary of an `evaluate_run` result."""
    d = result["data"]
    lines = [f"{result['kind']} on {d['dataset']} {d['method']} {d['level']:.0%}, {result['test_images']} test images, {result['precision']}"]
    if "test_negative_elbo" in result:
        lines.append(f"negative ELBO per image: validation {result['val_negative_elbo']:.1f} nats, test {result['test_negative_elbo']:.1f} nats")
    if "test_negative_bound" in result:
        lines.append(f"negative importance-weighted bound per image: validation {result['val_negative_bound']:.1f} nats, "
                     f"test {result['test_negative_bound']:.1f} nats; RMSE on the missing test pixels {result['test_rmse_missing']:.4f}")
    if "accuracy" in result:
        lines.append(f"accuracy {result['accuracy']:.4f}")
    if "accuracy_on_one_vae_imputation" in result:
        lines.append(f"accuracy on one VAE imputation {result['accuracy_on_one_vae_imputation']:.4f}  (z vs direct {result['z_imputation_vs_direct']:+.2f})")
    if "single_accuracy" in result:
        lines.append(f"single imputation (z = mu)  accuracy {result['single_accuracy']:.4f}")
        for m, row in result["multiple"].items():
            lines.append(f"multiple imputation M={m:<5} accuracy {row['accuracy']:.4f}  z_multi/single {row['z_multi_single']:+.2f}  McNemar p {row['mcnemar_p']:.3f}")
    if "health" in result:
        lines.append(health_line(result["health"]))
    return "\n".join(lines)


def _on_interrupt(signum, frame):
    request_interrupt()  # remembered where Python would swallow the KeyboardInterrupt below
    raise KeyboardInterrupt


def _unraisable(hook):
    """`sys.unraisablehook` that stays silent about a Ctrl-C raised inside a finaliser or garbage-collection callback:
    Python would print it with a traceback and go on; it is recorded, and raised again at the next check."""
    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)
    return quiet


def main(argv=None):
    """Runs the `mivae` command; returns its exit status."""
    import signal
    import threading

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_interrupt) if in_main_thread else None
    unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
        check_interrupt()  # a Ctrl-C swallowed near the end still means the user asked to stop
    except MivaeError as e:
        print(f"mivae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mivae: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away, as `mivae data info | head` does
        sys.stdout = None
        return 0
    finally:
        forget_interrupt()
        sys.unraisablehook = unraisable
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The table commands: impute and classify."""

import math
from pathlib import Path

from mivae.artifacts import check_writable_folder
from mivae.cli.options import api_errors, name_list, print_notes
from mivae.errors import MivaeError, check_number, check_whole


def add_commands(commands):
    impute = commands.add_parser(
        "impute",
        help="fill the missing entries of a CSV or Parquet table: M completed tables",
        description="Fits a VAE on the observed entries of a table (CSV or Parquet, empty cells missing) and writes "
        "--imputations completed tables to --out, each with the input's columns in the input's order: "
        "OUT/STEM.imputed-K.EXT. Numeric columns are continuous, text and true/false columns categorical, unless "
        "declared otherwise. A Parquet file, or a folder of them (a dataset), is imputed one row group at a time and "
        "written in the same layout (OUT/NAME.imputed-K/ for a folder), so that with --fit-rows memory holds the "
        "model, the fitting sample and one row group, however large the table.",
    )
    impute.add_argument("data", help="the table: .csv, .tsv or .parquet, or a folder of .parquet files")
    impute.add_argument("--out", required=True, help="folder for the completed tables")
    impute.add_argument(
        "--imputations", "--samples", dest="imputations", metavar="M", type=int, default=10,
        help="M, the number of completed tables (default: 10; --samples: the same)",
    )  # fmt: skip
    impute.add_argument(
        "--single", action="store_true", help="also write the single best imputation, OUT/STEM.single.EXT"
    )
    impute.add_argument("--format", choices=("csv", "parquet"), help="output format (default: that of the input)")
    impute.add_argument(
        "--fit-rows", type=int, metavar="N",
        help="fit on a sample of N rows, drawn by --seed, where the table has more (default: every row)",
    )  # fmt: skip
    _add_table_model_flags(impute)
    impute.set_defaults(run=_impute)

    classify = commands.add_parser(
        "classify",
        help="cross-validate a classifier over multiple imputations of a table with missing values",
        description="Predicts --target from the other columns of a table with missing entries: in each fold a VAE is "
        "fitted on the training rows, a logistic regression on --imputations imputations of them, and test rows are "
        "classified by the mean of its probabilities over --imputations imputations. Prints the accuracy per fold "
        "beside a baseline's: the same logistic regression on the column means and modes, on the same folds.",
    )
    classify.add_argument("data", help="the table: .csv, .tsv or .parquet")
    classify.add_argument("--target", required=True, help="the column to predict; it must have no missing entry")
    classify.add_argument("--folds", type=int, default=5, help="cross-validation folds, stratified (default: 5)")
    classify.add_argument(
        "--imputations", "--samples", dest="imputations", metavar="M", type=int, default=10,
        help="M, imputations per row (default: 10; --samples: the same)",
    )  # fmt: skip
    classify.add_argument("--indicator", action="store_true", help="also give the classifier the missingness mask")
    _add_table_model_flags(classify)
    classify.set_defaults(run=_classify)


def _add_table_model_flags(parser):
    from mivae.models.tabular import DECODERS, LIKELIHOODS, MIN_SCALE, MISSINGNESS

    parser.add_argument(
        "--model",
        default="miwae",
        choices=("miwae", "not-miwae", "vae"),
        help="the imputer: MIWAE (importance-weighted, the default), not-MIWAE (MIWAE that also models why values "
        "go missing, for gaps that depend on the missing values themselves) or the VAE of the thesis on the "
        "masked ELBO",
    )
    parser.add_argument(
        "--missingness",
        choices=MISSINGNESS,
        help="not-MIWAE's model of the gaps (default: self-masking, each column's own value makes it go missing, "
        "in a direction learned; -high / -low: its high / low values go missing more often)",
    )
    parser.add_argument(
        "--categorical", type=name_list, default=[], help="comma-separated columns to treat as categorical"
    )
    parser.add_argument(
        "--continuous", type=name_list, default=[], help="comma-separated columns that must hold numbers"
    )
    parser.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default="gaussian",
        help="distribution of continuous columns (default: gaussian)",
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default="mlp",
        help="mlp (the default: hidden layers mirroring the encoder's) or linear (probabilistic PCA's: means affine "
        "in the latent, a scale per column; for columns that hang together linearly, and slower to learn: give it "
        "--epochs 3000 --patience 300)",
    )
    parser.add_argument(
        "--min-scale",
        type=float,
        default=MIN_SCALE,
        help=f"smallest scale of a continuous column's distribution, in standard deviations (default: {MIN_SCALE:g}); "
        "where columns repeat values exactly (counts, pixel intensities), 1 keeps the model from concentrating on "
        "them",
    )
    parser.add_argument("--epochs", type=int, default=500, help="most training epochs (default: 500)")
    parser.add_argument(
        "--patience",
        type=int,
        default=50,
        help="epochs without a better validation bound before training stops (default: 50)",
    )
    parser.add_argument(
        "--n-init",
        type=int,
        default=1,
        help="fit from this many starts and keep the one with the best validation bound (default: 1)",
    )
    parser.add_argument(
        "--n-models",
        type=int,
        default=1,
        help="fit an ensemble of this many networks, each holding out rows of its own, and impute with all: the "
        "mean of their imputations, and draws from each in turn (default: 1; on a small table 5 imputes closer)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the imputations (default: 0)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N or auto (the GPU where torch sees one); "
        "default: cpu, where a table's small matrices run fastest",
    )


def _table_imputer(args, categorical, fit_rows=None):
    from mivae.tables.estimators import MIWAEImputer, NotMIWAEImputer, VAEImputer

    check_whole("--epochs", args.epochs, 1)
    check_whole("--patience", args.patience, 1)
    check_whole("--n-init", args.n_init, 1)
    check_whole("--n-models", args.n_models, 1)
    check_number("--min-scale", args.min_scale, 0, math.inf, high_open=True)
    overlap = set(args.categorical) & set(args.continuous)
    if overlap:
        raise MivaeError(f"column {sorted(overlap)[0]!r} is declared both categorical and continuous.")
    if args.missingness is not None and args.model != "not-miwae":
        raise MivaeError(f"--missingness is a setting of --model not-miwae, not of --model {args.model}.")
    model = {"miwae": MIWAEImputer, "not-miwae": NotMIWAEImputer, "vae": VAEImputer}[args.model]
    missingness = {"missingness": args.missingness} if args.missingness is not None else {}
    return model(
        categorical=categorical or None,
        likelihood=args.likelihood,
        max_epochs=args.epochs,
        patience=args.patience,
        n_init=args.n_init,
        n_models=args.n_models,
        decoder=args.decoder,
        min_scale=args.min_scale,
        random_state=args.seed,
        device=args.device,
        fit_rows=fit_rows,
        **missingness,
    )


def _impute(args):
    import time
    import warnings

    from mivae.tables.io import read_table, table_format, write_table

    check_whole("--imputations", args.imputations, 1)
    if args.fit_rows is not None:
        check_whole("--fit-rows", args.fit_rows, 1)
    data = Path(args.data)
    streamed = data.is_dir() or table_format(data) == "parquet"
    ext = {"csv": ".csv", "parquet": ".parquet"}[args.format or ("parquet" if streamed else table_format(data))]
    if streamed:
        from mivae.tables.stream import ParquetSource, sample_rows

        source = ParquetSource(data, args.categorical, args.continuous)
        frame, missing = sample_rows(source, args.fit_rows, args.seed)
        rows, fit_rows = source.rows, None  # the sample is drawn here: the imputer fits on all it is given
    else:
        frame = read_table(data, args.categorical, args.continuous)
        rows, missing, fit_rows = len(frame), frame.isna().to_numpy().mean(), args.fit_rows
    out = Path(args.out)
    check_writable_folder(out)  # before training: a folder that cannot take the tables should not cost a fit
    imputer = _table_imputer(args, [c for c in args.categorical if c in frame.columns], fit_rows)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        api_errors(lambda: imputer.fit(frame))
    trained = time.perf_counter() - start
    print_notes(caught)
    kinds = [c.kind for c in imputer.schema_.columns]
    print(
        f"{data.name}: {rows} rows, {kinds.count('continuous')} continuous and {kinds.count('categorical')} "
        f"categorical columns, {missing:.1%} of entries missing"
    )
    print(
        f"{args.model} trained {len(imputer.history_.train_loss)} epochs (best {imputer.history_.best_epoch}) "
        f"on {imputer.fit_rows_} of {rows} rows in {trained:.1f}s"
    )
    digits = len(str(args.imputations))
    stem = data.name if data.is_dir() else data.stem
    names = [out / f"{stem}.imputed-{k:0{digits}d}" for k in range(1, args.imputations + 1)]
    single = out / f"{stem}.single"
    if not data.is_dir():
        names, single = [n.with_name(n.name + ext) for n in names], single.with_name(single.name + ext)
    if streamed:
        from mivae.tables.stream import impute_parquet

        chosen = single if args.single else None
        api_errors(lambda: impute_parquet(imputer, source, chosen, names, args.seed, suffix=ext))
    else:
        for name, table in zip(names, api_errors(lambda: imputer.sample(frame, args.imputations))):
            write_table(table, name)
        if args.single:
            write_table(api_errors(lambda: imputer.transform(frame)), single)
    print(f"wrote {args.imputations} completed tables{' and the single imputation' if args.single else ''} to {out}")


def _classify(args):
    import warnings

    from mivae.tables.baseline import compare_with_baseline, split_target
    from mivae.tables.estimators import MultipleImputationClassifier
    from mivae.tables.io import read_table

    check_whole("--imputations", args.imputations, 1)
    frame = read_table(args.data, [c for c in args.categorical if c != args.target], args.continuous)
    X, y = split_target(frame, args.target, args.folds, source=str(args.data), folds_name="--folds")
    categorical = [c for c in args.categorical if c in X.columns]
    model = MultipleImputationClassifier(
        _table_imputer(args, categorical),
        n_imputations=args.imputations,
        add_indicator=args.indicator,
        random_state=args.seed,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = api_errors(
            lambda: compare_with_baseline(model, X, y, args.folds, args.seed, categorical, args.indicator)
        )
    print_notes({str(w.message): w for w in caught}.values())
    print(
        f"{Path(args.data).name}: predicting {args.target!r} ({y.nunique()} classes) from {X.shape[1]} columns, "
        f"{len(X)} rows, {X.isna().to_numpy().mean():.1%} of entries missing"
    )
    base = result.baseline_scores or [float("nan")] * args.folds
    for k, (score, baseline) in enumerate(zip(result.scores, base), 1):
        print(f"fold {k}: accuracy {score:.4f} (baseline {baseline:.4f})")
    mean, std = result.summary()
    print(f"accuracy {mean:.4f} +- {std:.4f} over {args.folds} folds (M = {args.imputations}, {args.model})")
    if result.baseline_scores is None:
        print(
            f"baseline: none, since the same classifier on the column means and modes failed: {result.baseline_failure}"
        )
    else:
        mean, std = result.summary(baseline=True)
        print(f"baseline {mean:.4f} +- {std:.4f}: the same classifier on the column means and modes, on the same folds")

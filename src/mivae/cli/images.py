"""The image commands: data info and fetch, corrupt, train, evaluate, search."""

from pathlib import Path

from mivae.artifacts import check_writable_folder, remove_stale_temporaries
from mivae.cli.options import (
    DEVICE_HELP,
    Parser,
    add_data_options,
    add_fit_flags,
    add_problem_flags,
    float_list,
    int_list,
    name_list,
    resolve_configs,
    set_threads,
)
from mivae.errors import MivaeError, check_whole


def add_commands(commands):
    """Adds the image commands: data, corrupt, train, evaluate, search."""
    data = commands.add_parser("data", help="inspect and fetch datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    data_commands.required = True
    info = data_commands.add_parser("info", help="dataset, split sizes and class counts per split")
    add_data_options(info)
    info.set_defaults(run=_data_info)
    fetch = data_commands.add_parser("fetch", help="download the dataset's files if absent and verify them")
    add_data_options(fetch)
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
    corrupt.add_argument(
        "--method", type=name_list, required=True, help=f"comma-separated methods: {', '.join(METHODS)}"
    )
    corrupt.add_argument("--levels", type=float_list, required=True, help="comma-separated corruption levels in [0, 1)")
    corrupt.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")
    corrupt.add_argument(
        "--index", type=int_list, default=[0], help="comma-separated test image indices, one row each (default: 0)"
    )
    corrupt.add_argument(
        "--fill",
        default="white",
        choices=FILL_POLICIES,
        help="what a missing pixel shows (default: white, as the thesis)",
    )
    corrupt.add_argument(
        "--exact", action="store_true", help="exactly round(cl * p) distinct pixels or columns missing"
    )
    add_data_options(corrupt)
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
    train.add_argument(
        "--imputer",
        "--vae",
        dest="vae",
        metavar="RUN",
        help="run directory of the trained imputer: a vae (vae+mlp, vae+cnn), miwae or not-miwae run (--vae: the same)",
    )
    add_problem_flags(train)
    model_flags = train.add_argument_group("model (each applies to the kinds named)")
    model_flags.add_argument("--hidden", help="nodes per hidden layer, comma-separated (vae, mlp)")
    model_flags.add_argument("--latent", type=int, help="latent dimension L (vae)")
    model_flags.add_argument("--lr", type=float, help="learning rate: Adam (vae), AdaDelta (classifiers)")
    model_flags.add_argument("--l2", type=float, help="coefficient of the squared weights in the loss")
    model_flags.add_argument(
        "--plain",
        dest="denoising",
        action="store_const",
        const=False,
        help="a plain VAE: reconstruct the corrupted input (vae)",
    )
    model_flags.add_argument(
        "--mask-input",
        dest="mask_input",
        action="store_const",
        const=True,
        help="mask-aware: see zero-filled values and the mask, never a fill value (vae, mlp, cnn)",
    )
    model_flags.add_argument(
        "--init",
        choices=INITS,
        help="weight initialisation: glorot (Keras' default, the thesis' "
        "framework; the default of vae and cnn) or torch (PyTorch's; the default of mlp) (vae, mlp, cnn)",
    )
    model_flags.add_argument(
        "--importance-samples",
        dest="samples",
        type=int,
        help="K, importance samples per image in training (miwae, not-miwae)",
    )
    model_flags.add_argument("--refine", type=int, help="channels of the local refinement network, 0 for none (miwae)")
    model_flags.add_argument(
        "--holdout", type=float, help="fraction of observed pixels held out to train the refinement (miwae)"
    )
    model_flags.add_argument(
        "--holdout-shape", choices=("pixels", "columns"), help="hold out single pixels or whole columns (miwae)"
    )
    model_flags.add_argument("--dense", type=int, help="nodes of the dense layer (cnn)")
    model_flags.add_argument("--dropout-conv", type=float, help="dropout before the dense layer (cnn)")
    model_flags.add_argument("--dropout-dense", type=float, help="dropout after the dense layer (cnn)")
    add_fit_flags(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="test a trained run on its corrupted test set")
    evaluate.add_argument("run_dir", help="run directory written by 'mivae train'")
    evaluate.add_argument(
        "--imputations",
        "--samples",
        dest="imputations",
        metavar="M",
        type=int_list,
        default=[1, 10, 100, 1000],
        help="numbers of imputations M for multiple imputation, comma-separated (default: 1,10,100,1000; "
        "--samples: the same)",
    )
    evaluate.add_argument(
        "--imputer",
        "--vae",
        dest="vae",
        metavar="RUN",
        help="a vae, miwae or not-miwae run: classify one imputation too (classifiers trained with --clean-train)",
    )
    evaluate.add_argument("--data-dir", help="folder holding the dataset's files")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default: 0)")
    evaluate.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="matmul precision (default: auto, bf16 where native)"
    )
    evaluate.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(run=_evaluate)

    search = commands.add_parser(
        "search",
        help="select a model by random search (thesis §3.5), retrain the best on train + validation, test it once",
        description="Random search with Optuna: every trial trains with early stopping on the validation set; the "
        "best configuration (lowest validation negative ELBO for vae, highest validation accuracy otherwise) is "
        "retrained on train + validation for its best epoch count and tested once. The study is kept in OUT/study.db "
        "(or --storage), so an interrupted search continues with --resume, and any number of workers can share a "
        "--storage database.",
    )
    search.add_argument("kind", nargs="?", choices=SEARCHABLE, help="what to select")
    search.add_argument(
        "--show-space", action="store_true", help="print the search spaces and their reasons, then exit"
    )
    search.add_argument("--out", help="search directory: study, search.json and the final run in final/")
    search.add_argument(
        "--trials", type=int, default=100, help="trials in the whole study, all workers together (default: 100)"
    )
    search.add_argument(
        "--layers",
        type=int_list,
        default=[2, 3, 4],
        help="hidden-layer counts of an MLP, comma-separated; one study each, the best of all retrained "
        "(default: 2,3,4, as §3.5)",
    )
    search.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    search.add_argument(
        "--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db (default: OUT/study.db)"
    )
    search.add_argument("--study", help="study name (default: from kind, dataset, corruption, level and seed)")
    search.add_argument("--resume", action="store_true", help="continue an existing study")
    search.add_argument("--search-seed", type=int, default=0, help="seed of the random draws (default: 0)")
    search.add_argument("--config", help="TOML or JSON file with [data] and [train] tables")
    search.add_argument(
        "--vae", help="run directory of the selected VAE, retrained on train + validation (vae+mlp, vae+cnn)"
    )
    add_problem_flags(search)
    add_fit_flags(search)
    search.set_defaults(run=_search)


def _data_info(args):
    from mivae.images.data import load_splits

    splits = load_splits(args.dataset, args.data_dir, seed=args.seed)
    height, width = splits.train.images.shape[1:]
    print(
        f"dataset {splits.dataset}: {sum(len(s) for s in splits)} images of {height}x{width} pixels, "
        f"{splits.n_classes} classes, split seed {args.seed}"
    )
    print(f"{'split':<6} {'images':>7}  " + " ".join(f"{c:>5}" for c in range(splits.n_classes)))
    for split in splits:
        print(f"{split.name:<6} {len(split):>7}  " + " ".join(f"{n:>5}" for n in split.class_counts(splits.n_classes)))


def _data_fetch(args):
    from mivae.images.data import load_idx_dataset, resolve_data_dir

    if args.dataset == "digits":
        print("digits ships with scikit-learn; nothing to fetch.")
        return
    train, test = load_idx_dataset(args.dataset, args.data_dir)
    print(
        f"{args.dataset}: {len(train)} training and {len(test)} test images verified in "
        f"{resolve_data_dir(args.dataset, args.data_dir)}"
    )


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
            corrupted = corrupt(
                test.images[: max(args.index) + 1], method, level, seed=args.seed, split="test", exact=args.exact
            )
            means = None
            if args.fill == "mean":
                means = pixel_means(
                    corrupt(splits.train.images, method, level, seed=args.seed, split="train", exact=args.exact)
                )
            shown = fill(corrupted, args.fill, means)[args.index]
            titles.append(
                f"{method.replace('-', ' ')} {level:.0%}\n({np.isnan(corrupted.values[args.index]).mean():.0%} missing)"
            )
            columns.append(shown)
    rows = [[column[r] for column in columns] for r in range(len(args.index))]
    image_grid(rows, titles, args.out)
    print(f"wrote {args.out}")


def _train(args):
    from mivae import config as cfg
    from mivae.images.pipeline import train_model
    from mivae.images.runs import load_run, save_run
    from mivae.models import KINDS

    check_writable_folder(args.out)
    set_threads(args.threads)
    tables = cfg.read_config_file(args.config) if args.config else {}
    model_cls = KINDS[args.kind].config
    data, model, train = resolve_configs(args, tables, model_cls)
    flags = {
        k: getattr(args, k)
        for k in (
            "hidden",
            "latent",
            "lr",
            "l2",
            "denoising",
            "mask_input",
            "init",
            "samples",
            "refine",
            "holdout",
            "holdout_shape",
            "dense",
            "dropout_conv",
            "dropout_dense",
        )
    }
    for name, value in flags.items():
        if value is not None and name not in model_cls.__dataclass_fields__:
            flag = {"denoising": "--plain", "samples": "--importance-samples"}.get(name, f"--{name.replace('_', '-')}")
            raise MivaeError(f"{flag} does not apply to {args.kind} models.")
    model = cfg.replace(model, **flags)
    vae_run = load_run(args.vae) if args.vae else None

    def progress(epoch, history):
        score = f"  val {history.val_score[-1]:.4f}" if history.val_score else ""
        print(
            f"epoch {epoch:>3}/{train.epochs}  train loss {history.train_loss[-1]:.4f}{score}  "
            f"{history.seconds[-1]:.1f}s",
            flush=True,
        )

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

    set_threads(args.threads)
    if not args.imputations or min(args.imputations) < 1:
        raise MivaeError(
            f"--imputations must be whole numbers of at least 1, like 1,10,100; got {args.imputations or 'none'}."
        )
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    vae_run = load_run(args.vae, device) if args.vae else None
    result = evaluate_run(
        run, args.imputations, args.data_dir, vae_run=vae_run, seed=args.seed, precision=args.precision
    )
    print(format_evaluation(result))
    try:
        write_json(Path(args.run_dir) / "evaluation.json", result.to_json())
    except OSError as e:
        raise MivaeError(f"cannot write {Path(args.run_dir) / 'evaluation.json'}: {e.strerror or e}.") from None


def _search(args):
    import optuna
    from tqdm.auto import tqdm

    from mivae import config as cfg
    from mivae.images.runs import load_run
    from mivae.models import KINDS
    from mivae.study.search import describe_spaces, search, spends_budget

    if args.show_space:
        print(describe_spaces())
        return
    if args.kind is None or args.out is None:
        raise MivaeError("mivae search needs a KIND and --out, or --show-space.")
    check_whole("--trials", args.trials, 1)
    if not args.layers or not set(args.layers) <= {2, 3, 4}:
        raise MivaeError(f"--layers takes 2, 3 or 4, comma-separated; got {args.layers or 'none'}.")
    check_writable_folder(args.out)
    remove_stale_temporaries(args.out)  # left by a search killed mid-write
    set_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tables = cfg.read_config_file(args.config) if args.config else {}
    data, _, train = resolve_configs(args, tables)
    vae_run = load_run(args.vae) if args.vae else None
    kind = KINDS[args.kind]
    if kind.imputer and vae_run is None:
        raise MivaeError(
            f"a {args.kind} search trains on a VAE's imputations; pass --vae with the selected VAE's final run."
        )
    studies = len(args.layers) if kind.part == "mlp" else 1
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
        result = search(
            args.kind,
            data,
            args.trials,
            args.out,
            train,
            storage=args.storage,
            study_name=args.study,
            seed=args.search_seed,
            resume=args.resume,
            timeout=args.timeout,
            vae_run=vae_run,
            layers=tuple(args.layers),
            data_dir=args.data_dir,
            on_trial=progress,
        )
    finally:
        bar.close()
    print(
        f"best configuration (trial value {result.best_value:.4f}, best epoch {result.best_epoch}): "
        f"{result.best_params}"
    )
    print("retrained on train + validation; test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items()))
    if result.health is not None:
        print(health_line(result.health))
    print(f"saved {result.run_dir} and {Path(args.out) / 'search.json'}")


def format_evaluation(result):
    """Returns the printable summary of an `evaluate_run` result (an Evaluation of mivae.images.results)."""
    from mivae.images import results as r

    d = result.data
    lines = [
        f"{result.kind} on {d['dataset']} {d['method']} {d['level']:.0%}, {result.test_images} test images, "
        f"{result.precision}"
    ]
    if isinstance(result, r.VAEEvaluation):
        lines.append(
            f"negative ELBO per image: validation {result.val_negative_elbo:.1f} nats, "
            f"test {result.test_negative_elbo:.1f} nats"
        )
    elif isinstance(result, r.BoundEvaluation):
        lines.append(
            f"negative importance-weighted bound per image: validation {result.val_negative_bound:.1f} nats, "
            f"test {result.test_negative_bound:.1f} nats; RMSE on the missing test pixels "
            f"{result.test_rmse_missing:.4f}"
        )
    elif isinstance(result, r.ClassifierEvaluation):
        lines.append(f"accuracy {result.accuracy:.4f}")
        if result.accuracy_on_one_vae_imputation is not None:
            lines.append(
                f"accuracy on one VAE imputation {result.accuracy_on_one_vae_imputation:.4f}  "
                f"(z vs direct {result.z_imputation_vs_direct:+.2f})"
            )
    elif isinstance(result, r.Type2Evaluation):
        lines.append(f"single imputation (z = mu)  accuracy {result.single_accuracy:.4f}")
        for m, row in result.multiple.items():
            lines.append(
                f"multiple imputation M={m:<5} accuracy {row.accuracy:.4f}  "
                f"z_multi/single {row.z_multi_single:+.2f}  McNemar p {row.mcnemar_p:.3f}"
            )
    elif isinstance(result, r.ImportanceWeightedEvaluation):
        lines.append(
            f"single imputation accuracy {result.single['accuracy']:.4f}; K = {result.samples} imputations: "
            f"importance-weighted {result.importance_weighted['accuracy']:.4f} "
            f"(z vs single {result.z_weighted_vs_single:+.2f}), uniform {result.uniform['accuracy']:.4f} "
            f"(z weighted vs uniform {result.z_weighted_vs_uniform:+.2f})"
        )
    if result.health is not None:
        lines.append(health_line(result.health))
    return "\n".join(lines)

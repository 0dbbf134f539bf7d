"""The study commands: reproduce and report."""

from pathlib import Path

from mivae.cli.options import DEVICE_HELP, set_threads
from mivae.errors import MivaeError, check_whole


def add_commands(commands):
    from mivae.study.reproduce import PRESETS

    reproduce = commands.add_parser(
        "reproduce",
        help="re-run the thesis' whole study (§4) and write the report beside the thesis' numbers",
        description="Runs the whole study of §4: both corruption methods at 50, 70 and 90 %, Type 1 and Type 2 "
        "classifiers selected by random search, single and multiple imputation, Tables 1-7 and Figures 4, 8-16. "
        "Every trained model and result is kept in --out under a key of its configuration: running the same "
        "command again reuses them, and an interrupted run continues where it stopped. Presets: "
        + "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items())
        + ".",
    )
    reproduce.add_argument("--preset", default="smoke", help=f"{', '.join(PRESETS)} (default: smoke)")
    reproduce.add_argument("--out", help="run directory (default: out/reproduce-PRESET)")
    reproduce.add_argument(
        "--data-dir", help="folder holding the dataset's files (default: $MIVAE_DATA_DIR, then the user cache)"
    )
    reproduce.add_argument(
        "--seed", type=int, default=0, help="seed of the split, corruption, searches and training (default: 0)"
    )
    reproduce.add_argument(
        "--storage", help="Optuna storage URL shared by a fleet of workers, such as postgresql://host/db"
    )
    reproduce.add_argument("--limit", type=int, help="use only the first LIMIT images of each split (a quick look)")
    reproduce.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")
    reproduce.add_argument("--device", default="auto", help=DEVICE_HELP)
    reproduce.add_argument(
        "--settings",
        help="run only these settings, comma-separated: rp50, rp70, rp90 (Random Pixels), "
        "vl50, vl70, vl90 (Vertical Lines), or all (default: all)",
    )
    reproduce.add_argument("--thesis-only", action="store_true", help="skip the beyond-the-thesis stage")
    reproduce.set_defaults(run=_reproduce)

    report = commands.add_parser(
        "report", help="rebuild the report of a reproduce run from its results, without training"
    )
    report.add_argument("run_dir", help="run directory written by 'mivae reproduce'")
    report.set_defaults(run=_report)


def _reproduce(args):
    import optuna

    from mivae.hardware import resolve_device
    from mivae.study.report import build_report
    from mivae.study.reproduce import PRESETS, parse_settings, reproduce

    if args.preset not in PRESETS:
        raise MivaeError(f"unknown preset {args.preset!r}; known presets are {', '.join(PRESETS)}.")
    settings = parse_settings(args.settings)
    if args.limit is not None:
        check_whole("--limit", args.limit, 1)
    set_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or f"out/reproduce-{args.preset}")
    study = reproduce(
        args.preset,
        out,
        seed=args.seed,
        data_dir=args.data_dir,
        storage=args.storage,
        limit=args.limit,
        progress=True,
        settings=settings,
        beyond_stage=not args.thesis_only,
        device=str(resolve_device(args.device)),
    )
    reused = sum(unit.reused for unit in study.done)
    print(f"{len(study.done)} trained units, {reused} reused from earlier runs.")
    print(f"report: {build_report(out)}")


def _report(args):
    from mivae.study.report import build_report

    print(f"report: {build_report(args.run_dir)}")

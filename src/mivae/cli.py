"""The `mivae` command: a thin layer over the public Python API.

Every command takes --seed; errors a user can fix are one sentence on stderr and exit
status 2.
"""

import argparse
import sys

from mivae import __version__
from mivae.errors import MivaeError

EXIT_USAGE = 2


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
    from mivae.data import DATASETS

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

    from mivae.corruption import FILL_POLICIES, METHODS

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
    return parser


def _indices(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes whole numbers separated by commas; got {text!r}") from None


def _data_info(args):
    from mivae.data import load_splits

    splits = load_splits(args.dataset, args.data_dir, seed=args.seed)
    print(f"dataset {splits.dataset}: {sum(len(s) for s in splits)} images of {splits.train.images.shape[1]}x{splits.train.images.shape[2]} pixels, {splits.n_classes} classes, split seed {args.seed}")
    print(f"{'split':<6} {'images':>7}  " + " ".join(f"{c:>5}" for c in range(splits.n_classes)))
    for split in splits:
        print(f"{split.name:<6} {len(split):>7}  " + " ".join(f"{n:>5}" for n in split.class_counts(splits.n_classes)))


def _data_fetch(args):
    from mivae.data import load_idx_dataset, resolve_data_dir

    if args.dataset == "digits":
        print("digits ships with scikit-learn; nothing to fetch.")
        return
    train, test = load_idx_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset}: {len(train)} training and {len(test)} test images verified in {resolve_data_dir(args.dataset, args.data_dir)}")


def _corrupt(args):
    import numpy as np

    from mivae.corruption import check_level, check_method, corrupt, fill, pixel_means
    from mivae.data import load_splits
    from mivae.figures import check_figure_path, image_grid

    check_figure_path(args.out)
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
            corrupted = corrupt(test.images, method, level, seed=args.seed, split="test", exact=args.exact)
            means = None
            if args.fill == "mean":
                means = pixel_means(corrupt(splits.train.images, method, level, seed=args.seed, split="train", exact=args.exact))
            shown = fill(corrupted, args.fill, means)[args.index]
            titles.append(f"{method.replace('-', ' ')} {level:.0%}\n({np.isnan(corrupted.values[args.index]).mean():.0%} missing)")
            columns.append(shown)
    rows = [[column[r] for column in columns] for r in range(len(args.index))]
    image_grid(rows, titles, args.out)
    print(f"wrote {args.out}")


def main(argv=None):
    """Runs the `mivae` command; returns its exit status."""
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except MivaeError as e:
        print(f"mivae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mivae: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the commands share: the parser whose errors are one sentence, list-valued flags, the flags of the
data, problem and training configs, and the mapping of the Python API's errors to one-sentence errors."""

import argparse
import sys

from mivae.errors import MivaeError, check_whole

DEVICE_HELP = "cpu, cuda, cuda:N, or auto: the GPU where torch sees one, else the CPU (default: auto)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one sentence, like every other mivae error."""

    def error(self, message):
        raise MivaeError(f"{message} (see '{self.prog} --help').")


def float_list(text):
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes numbers separated by commas, like 0.5,0.7,0.9; got {text!r}") from None
    if not levels:
        raise argparse.ArgumentTypeError("needs at least one level")
    return levels


def name_list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def int_list(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes whole numbers separated by commas; got {text!r}") from None


def add_data_options(parser):
    from mivae.images.data import DATASETS

    parser.add_argument("--dataset", default="mnist", choices=DATASETS, help="dataset (default: mnist)")
    parser.add_argument(
        "--data-dir", help="folder holding the dataset's files (default: $MIVAE_DATA_DIR, then the user cache)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the corruption (default: 0)")


def add_problem_flags(parser):
    """Flags of DataConfig: which data, corrupted how."""
    from mivae.images.corruption import METHODS
    from mivae.images.data import DATASETS
    from mivae.images.problem import FILLS

    flags = parser.add_argument_group("data")
    flags.add_argument("--dataset", choices=DATASETS, help="dataset (default: mnist)")
    flags.add_argument("--data-dir", help="folder holding the dataset's files")
    flags.add_argument(
        "--corruption", dest="method", choices=METHODS, help="corruption method (default: random-pixels)"
    )
    flags.add_argument("--level", type=float, help="corruption level in [0, 1) (default: 0.5)")
    flags.add_argument(
        "--fill",
        choices=FILLS,
        help="what a model sees in a missing pixel: a constant, the pixel means, "
        "or scikit-learn's IterativeImputer or KNNImputer (default: white)",
    )
    flags.add_argument("--exact", action="store_const", const=True, help="exactly round(cl * p) missing units")
    flags.add_argument(
        "--clean-train", action="store_const", const=True, help="train and validate on clean images (Tables 6, 7)"
    )
    flags.add_argument("--limit", type=int, help="use only the first LIMIT images of each split")
    flags.add_argument("--seed", type=int, help="seed of the split, the corruption and the training (default: 0)")


def add_fit_flags(parser):
    """Flags of TrainConfig: how a model is fitted."""
    from mivae.hardware import PRECISIONS

    flags = parser.add_argument_group("training")
    flags.add_argument("--epochs", type=int, help="most epochs (default: 50)")
    flags.add_argument("--patience", type=int, help="early-stopping patience in epochs (default: 5)")
    flags.add_argument("--min-epochs", type=int, help="epochs before early stopping may end training (default: 10)")
    flags.add_argument(
        "--min-delta", type=float, help="least gain in the validation score that resets the patience (default: 0)"
    )
    flags.add_argument("--batch-size", type=int, help="images per step (default: 128)")
    flags.add_argument("--device", help=DEVICE_HELP)
    flags.add_argument("--precision", choices=PRECISIONS, help="matmul precision (default: auto, bf16 where native)")
    flags.add_argument("--threads", type=int, help="CPU threads (default: the fastest count, measured)")


def resolve_configs(args, tables, model_cls=None):
    """Returns (data, model, train) configs: file tables first, flags over them; model is None without model_cls."""
    from mivae import config as cfg

    allowed = {"data", "model", "train"} if model_cls else {"data", "train"}
    unknown = sorted(set(tables) - allowed)
    if unknown:
        raise MivaeError(
            f"unknown table [{unknown[0]}] in {args.config}; "
            f"expected {' and '.join(f'[{t}]' for t in sorted(allowed))}."
        )
    data = cfg.from_dict(cfg.DataConfig, tables.get("data", {}), "data")
    data = cfg.replace(
        data,
        **{
            k: getattr(args, k) for k in ("dataset", "method", "level", "fill", "exact", "clean_train", "limit", "seed")
        },
    )
    train = cfg.from_dict(cfg.TrainConfig, tables.get("train", {}), "train")
    fit_flags = ("epochs", "patience", "min_epochs", "min_delta", "batch_size", "device", "precision", "seed")
    train = cfg.replace(train, **{k: getattr(args, k) for k in fit_flags})
    model = cfg.from_dict(model_cls, tables.get("model", {}), "model") if model_cls else None
    return data, model, train


def set_threads(threads):
    """Sets the CPU thread count once: as given, else the fastest count measured on this machine; and keeps the
    heap from fragmenting over a long run (hardware.steady_heap)."""
    import torch

    from mivae.hardware import measure_threads, steady_heap

    if threads is not None:
        check_whole("--threads", threads, 1)
    torch.set_num_threads(threads or measure_threads())
    steady_heap()


def api_errors(action):
    """Runs `action` and returns its result; ValueError and TypeError from the Python API become one-sentence errors."""
    try:
        return action()
    except MivaeError:
        raise
    except (ValueError, TypeError) as e:
        raise MivaeError(str(e).strip().splitlines()[0]) from None


def print_notes(caught):
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)

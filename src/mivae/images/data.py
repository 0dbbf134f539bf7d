"""Datasets: MNIST and Fashion-MNIST from IDX files, scikit-learn's digits, and the thesis split.

Images are float32 in [0, 1] with shape (N, H, W); labels are int64 with shape (N,).
Every IDX file is validated as it is read (gzip stream, magic number, dimensions,
counts, label range) and checked against the SHA-256 of its published content, decompressed, so
a truncated, empty or foreign file is one clear `MivaeError`, never a reshape traceback, and a copy
compressed anew (as Debian's packages are) or not compressed at all is accepted.

Where the files are looked for, in order: the `data_dir` argument (`--data-dir`), the
environment variable `MIVAE_DATA_DIR`, then a per-user cache directory
(`$XDG_CACHE_HOME/mivae/<dataset>`, by default `~/.cache/mivae/<dataset>`). A given folder
holds either one subfolder per dataset (`mnist/`, `fashion-mnist/`) or one dataset's four
files under their standard names. Files that are absent are
downloaded from the dataset's public mirrors (or `MIVAE_MIRRORS`, comma-separated
base URLs) with a progress bar.
"""

import gzip
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mivae.artifacts import atomic_path
from mivae.errors import MivaeError, check_whole

# ----------------------------------------------------------------------------------------
# The datasets mivae knows


@dataclass(frozen=True)
class IdxFile:
    """One published IDX file and the digest it is checked against."""

    name: str  # standard file name, gzip-compressed
    sha256: str  # of the decompressed content: a copy is known by what it holds, however it was compressed


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-shaped dataset: four IDX files, a training and a test set."""

    name: str  # as passed to --dataset
    title: str  # as printed for people
    mirrors: tuple[str, ...]  # base URLs, tried in order
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    n_train: int  # images in the training file
    n_test: int  # images in the test file
    image_shape: tuple[int, int] = (28, 28)
    n_classes: int = 10

    @property
    def files(self):
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


def _standard_files(*sha256s):
    """The four files of an MNIST-shaped dataset under their standard names (training images and labels, test images
    and labels), each with the SHA-256 of its decompressed content, as IdxDataset's fields."""
    fields = ("train_images", "train_labels", "test_images", "test_labels")
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    names += ("t10k-labels-idx1-ubyte.gz",)
    return {f: IdxFile(n, sha256) for f, n, sha256 in zip(fields, names, sha256s, strict=True)}


MNIST = IdxDataset(
    name="mnist",
    title="MNIST",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    # SHA-256 of the decompressed files as published with the original database.
    **_standard_files(
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    n_train=60_000,
    n_test=10_000,
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    # SHA-256 of the decompressed files as published by the dataset's authors, Zalando Research. Computed from
    # Debian's dataset-fashion-mnist package (0.0~git20200523.55506a9-1), whose files are the published gzip
    # streams with the file name and time left out of their headers. Put back (time 1504176606 for the training
    # files, 1504176627 for the test files), they give the MD5s the authors published for their archives:
    #   8d4fb7e6c68d591d4c3dfef9ec88bf0d  train-images-idx3-ubyte.gz
    #   25c81989df183df01b3e8a0aad5dffbe  train-labels-idx1-ubyte.gz
    #   bef4ecab320f06d8554ea6380940ec79  t10k-images-idx3-ubyte.gz
    #   bb300cfdad3c16e7a12a480ee83cd310  t10k-labels-idx1-ubyte.gz
    **_standard_files(
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
    n_train=60_000,
    n_test=10_000,
)

IDX_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}
DATASETS = (*IDX_DATASETS, "digits")  # digits: scikit-learn's bundled 8x8 digits, always offline
# The shape of each dataset's images and its number of classes.
SHAPES = {**{d.name: (d.image_shape, d.n_classes) for d in IDX_DATASETS.values()}, "digits": ((8, 8), 10)}


@dataclass(frozen=True)
class Split:
    """A labelled set of images, named for what it is used for."""

    name: str  # "train", "val" or "test"; also keys the corruption of this split
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64

    def __len__(self):
        return len(self.labels)

    def class_counts(self, n_classes=10):
        """Returns the number of images of each class, shape (n_classes,)."""
        return np.bincount(self.labels, minlength=n_classes)


@dataclass(frozen=True)
class Splits:
    """Training, validation and test sets of one dataset (thesis §3.5)."""

    dataset: str
    train: Split
    val: Split
    test: Split
    n_classes: int = 10

    def __iter__(self):
        return iter((self.train, self.val, self.test))


# ----------------------------------------------------------------------------------------
# Where the files live


def cache_dir():
    """Returns the per-user cache directory that holds downloaded datasets."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mivae"


def resolve_data_dir(dataset, data_dir=None):
    """Returns the folder for `dataset`'s files: under `data_dir`, else $MIVAE_DATA_DIR, else the cache.

    A given folder may hold one subfolder per dataset (`<dir>/mnist`, `<dir>/fashion-mnist`)
    or the dataset's files themselves; a dataset found in neither way goes to `<dir>/<dataset>`.
    """
    given = data_dir if data_dir is not None else os.environ.get("MIVAE_DATA_DIR") or None
    if given is None:
        return cache_dir() / dataset
    root = Path(given).expanduser()
    if (root / dataset).is_dir():
        return root / dataset
    spec = IDX_DATASETS.get(dataset)
    if spec is not None and any(_find(root, entry) for entry in spec.files):
        return root
    return root / dataset


def _mirrors(spec):
    override = os.environ.get("MIVAE_MIRRORS", "").strip()
    if override:
        return tuple(m.strip() for m in override.split(",") if m.strip())
    return spec.mirrors


# ----------------------------------------------------------------------------------------
# Reading and validating IDX files

_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type MNIST uses


def _decompress(path, raw):
    """Returns the decompressed bytes of a gzip file, or the bytes as they are if not gzip."""
    if raw[:2] != b"\x1f\x8b":
        return raw  # an uncompressed IDX file is accepted as well
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise MivaeError(f"{path} is truncated: its gzip stream ends early; delete it and download it again.") from None
    except (OSError, zlib.error) as e:
        raise MivaeError(f"{path} is not a valid gzip file ({e}).") from None


def parse_idx(content, path, ndim):
    """Returns the unsigned-byte array in IDX `content`, checking header and length.

    `path` names the file in messages; `ndim` is the expected number of dimensions
    (3 for images, 1 for labels).
    """
    kind = "image" if ndim == 3 else "label"
    header = 4 + 4 * ndim
    if len(content) < 4:
        raise MivaeError(f"{path} is too short to be an IDX {kind} file ({len(content)} bytes).")
    zero, dtype, got_ndim = int.from_bytes(content[:2], "big"), content[2], content[3]
    if zero != 0 or dtype != _IDX_UBYTE or got_ndim != ndim:
        magic = int.from_bytes(content[:4], "big")
        expected = 0x0800 + ndim
        raise MivaeError(
            f"{path} is not an IDX {kind} file: magic number {magic} (0x{magic:08x}), "
            f"expected {expected} (0x{expected:08x})."
        )
    if len(content) < header:
        raise MivaeError(f"{path} is too short to be an IDX {kind} file ({len(content)} bytes).")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    got_bytes = len(content) - header
    if got_bytes < expected_bytes:
        raise MivaeError(
            f"{path} is truncated: its header promises {'x'.join(map(str, dims))} values but it holds {got_bytes}."
        )
    if got_bytes > expected_bytes:
        raise MivaeError(
            f"{path} has {got_bytes - expected_bytes} bytes beyond the {'x'.join(map(str, dims))} values its "
            "header declares."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _check_digest(path, entry, content):
    if hashlib.sha256(content).hexdigest() != entry.sha256:
        raise MivaeError(
            f"{path} does not match the published SHA-256 of {entry.name}'s content; it is damaged or another "
            "dataset's file."
        )


def read_idx(path, entry=None, ndim=3, verify=True):
    """Returns the array stored in the IDX file at `path`, uint8 with `ndim` dimensions.

    With `entry` given and `verify` true, the file must also match `entry`'s digest.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MivaeError(f"cannot read {path}: {e.strerror or e}.") from None
    if not raw:
        raise MivaeError(f"{path} is empty.")
    content = _decompress(path, raw)
    array = parse_idx(content, path, ndim)
    if verify and entry is not None:
        _check_digest(path, entry, content)
    return array


# ----------------------------------------------------------------------------------------
# Downloading


def _download_file(spec, entry, folder):
    """Downloads `entry` into `folder` from the first mirror that serves a file with the right digest."""
    from tqdm.auto import tqdm

    failures = []
    for base in _mirrors(spec):
        url = base.rstrip("/") + "/" + entry.name
        try:
            with urllib.request.urlopen(url, timeout=30) as response, atomic_path(folder / entry.name) as tmp:
                total = int(response.headers.get("Content-Length") or 0) or None
                with (
                    open(tmp, "wb") as out,
                    tqdm(total=total, unit="B", unit_scale=True, desc=entry.name, leave=False, disable=None) as bar,
                ):
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
                raw = tmp.read_bytes()
                _check_digest(url, entry, _decompress(url, raw))
            return
        except MivaeError as e:  # a wrong digest; before ValueError, which it is too
            failures.append(str(e).rstrip("."))
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
    raise MivaeError(
        f"{spec.title} file {entry.name} is not in {folder} and could not be downloaded "
        f"({'; '.join(failures) or 'no mirror configured'}); put the four {spec.title} files there, "
        f"or point --data-dir or MIVAE_DATA_DIR at a folder that holds them."
    )


def fetch(dataset, data_dir=None, download=True):
    """Returns the folder holding `dataset`'s four files, downloading any that are absent."""
    spec = _idx_spec(dataset)
    folder = resolve_data_dir(dataset, data_dir)
    for entry in spec.files:
        if _find(folder, entry) is not None:
            continue
        if not download:
            raise MivaeError(
                f"{spec.title} file {entry.name} is not in {folder}; put the four {spec.title} files there, "
                f"or point --data-dir or MIVAE_DATA_DIR at a folder that holds them."
            )
        created = None  # the highest folder this call creates
        for candidate in (folder, *folder.parents):
            if candidate.exists():
                break
            created = candidate
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MivaeError(f"cannot create the data folder {folder}: {e.strerror or e}.") from None
        try:
            _download_file(spec, entry, folder)
        except MivaeError:
            if created is not None and not any(p.is_file() for p in created.rglob("*")):
                shutil.rmtree(created)  # leave no empty folders behind a failed download
            raise
    return folder


def _find(folder, entry):
    """Returns the path of `entry` in `folder`, compressed or not, or None."""
    for name in (entry.name, entry.name.removesuffix(".gz")):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_spec(dataset):
    if dataset not in IDX_DATASETS:
        raise MivaeError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}.")
    return IDX_DATASETS[dataset]


# ----------------------------------------------------------------------------------------
# Loading


def load_idx_dataset(dataset, data_dir=None, download=True, verify=True):
    """Returns the official (train, test) sets of an IDX dataset as `Split`s named "train" and "test"."""
    spec = _idx_spec(dataset)
    folder = fetch(dataset, data_dir, download=download)
    sets = []
    for name, images_entry, labels_entry, n in (
        ("train", spec.train_images, spec.train_labels, spec.n_train),
        ("test", spec.test_images, spec.test_labels, spec.n_test),
    ):
        images_path, labels_path = _find(folder, images_entry), _find(folder, labels_entry)
        images = read_idx(images_path, images_entry, ndim=3, verify=verify)
        labels = read_idx(labels_path, labels_entry, ndim=1, verify=verify)
        if images.shape[1:] != spec.image_shape:
            raise MivaeError(
                f"{images_path} holds {images.shape[1]}x{images.shape[2]} images; "
                f"{spec.title} images are {spec.image_shape[0]}x{spec.image_shape[1]}."
            )
        if len(images) != n or len(labels) != n:
            raise MivaeError(
                f"{spec.title} {name} files hold {len(images)} images and {len(labels)} labels; expected {n} of each."
            )
        if labels.max() >= spec.n_classes:
            raise MivaeError(
                f"{labels_path} holds label {labels.max()}; {spec.title} labels run from 0 to {spec.n_classes - 1}."
            )
        sets.append(Split(name, images.astype(np.float32) / 255.0, labels.astype(np.int64)))
    return tuple(sets)


def stratified_split(labels, n_holdout, seed):
    """Returns (keep, holdout) index arrays, `n_holdout` drawn stratified by label, deterministic for `seed`."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    keep, holdout = train_test_split(index, test_size=n_holdout, stratify=labels, random_state=seed)
    return np.sort(keep), np.sort(holdout)


def _subset(split, index, name):
    return Split(name, split.images[index], split.labels[index])


def load_splits(dataset="mnist", data_dir=None, seed=0, val_size=None, download=True, verify=True):
    """Returns the thesis split (§3.5) of `dataset`: train, validation and test sets.

    MNIST and Fashion-MNIST: `val_size` (default 10,000) images drawn stratified from the
    60,000 training images for validation, the rest for training, and the official 10,000
    test images as the test set. digits (1,797 images, no official test set): 20 % drawn
    stratified for the test set and `val_size` (default 20 % of all) for validation.
    The split depends only on `seed`.
    """
    check_whole("seed", seed)
    if dataset == "digits":
        return _digits_splits(seed, val_size)
    full_train, test = load_idx_dataset(dataset, data_dir, download=download, verify=verify)
    val_size = 10_000 if val_size is None else val_size
    _check_holdout(val_size, len(full_train), "val_size")
    train_index, val_index = stratified_split(full_train.labels, val_size, seed)
    return Splits(
        dataset,
        _subset(full_train, train_index, "train"),
        _subset(full_train, val_index, "val"),
        test,
        IDX_DATASETS[dataset].n_classes,
    )


def _digits_splits(seed, val_size):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    everything = Split("all", (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64))
    n = len(everything)
    val_size = round(0.2 * n) if val_size is None else val_size
    _check_holdout(val_size, n - round(0.2 * n), "val_size")
    rest_index, test_index = stratified_split(everything.labels, round(0.2 * n), seed)
    rest = _subset(everything, rest_index, "rest")
    train_index, val_index = stratified_split(rest.labels, val_size, seed)
    return Splits(
        "digits",
        _subset(rest, train_index, "train"),
        _subset(rest, val_index, "val"),
        _subset(everything, test_index, "test"),
    )


def _check_holdout(size, available, what):
    if not isinstance(size, (int, np.integer)) or not 10 <= size <= available - 10:
        raise MivaeError(f"{what} must be a whole number from 10 to {available - 10}; got {size!r}.")

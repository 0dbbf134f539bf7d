import gzip
import hashlib
import os
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes, write_idx

from mivae.errors import MivaeError
from mivae.images.data import FASHION_MNIST, MNIST, fetch, load_idx_dataset, load_splits, read_idx, resolve_data_dir

# Published class counts of MNIST.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_idx_dataset("mnist", mnist_dir)


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return load_splits("mnist", mnist_dir, seed=0)


# ---------------------------------------------------------------------------------------
# Real MNIST


def test_mnist_loads_with_published_shapes_counts_and_values(mnist):
    train, test = mnist
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert test.class_counts().tolist() == MNIST_TEST_COUNTS
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert train.labels[0] == 5 and test.labels[0] == 7  # the well-known first digits
    assert 0.12 < train.images.mean() < 0.14  # MNIST's mean intensity is 0.1307


def test_thesis_split_sizes_disjoint_and_stratified(mnist, splits):
    train, _ = mnist
    assert [len(s) for s in splits] == [50_000, 10_000, 10_000]
    # Together, train and val are exactly the 60,000 training images, each once.
    together = np.concatenate([splits.train.images, splits.val.images]).reshape(60_000, -1)
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.array_equal(order(together), order(train.images.reshape(60_000, -1)))
    # Stratified: every class is within one image of its share of 10,000.
    expected = np.array(MNIST_TRAIN_COUNTS) * 10_000 / 60_000
    assert np.all(np.abs(splits.val.class_counts() - expected) <= 1)
    assert splits.test.class_counts().tolist() == MNIST_TEST_COUNTS


def test_thesis_split_is_deterministic_for_a_seed(mnist_dir, splits):
    again = load_splits("mnist", mnist_dir, seed=0)
    other = load_splits("mnist", mnist_dir, seed=1)
    assert np.array_equal(again.val.images, splits.val.images)
    assert not np.array_equal(other.val.labels, splits.val.labels)


def test_digits_split_is_offline_stratified_and_scaled():
    splits = load_splits("digits", seed=3)
    assert [len(s) for s in splits] == [1079, 359, 359]
    assert splits.train.images.shape[1:] == (8, 8)
    assert splits.train.images.max() == 1.0 and splits.train.images.min() == 0.0
    for split in splits:
        assert np.all(np.abs(split.class_counts() / len(split) - 0.1) < 0.02)


def test_val_size_out_of_range_is_refused(mnist_dir):
    with pytest.raises(MivaeError, match="val_size must be a whole number from 10 to 59990"):
        load_splits("mnist", mnist_dir, val_size=60_000)


def test_unknown_dataset_is_one_clear_error():
    with pytest.raises(MivaeError, match="unknown dataset 'cifar'; expected one of mnist, fashion-mnist, digits"):
        load_idx_dataset("cifar")


# ---------------------------------------------------------------------------------------
# Look-up order


def test_data_dir_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir("mnist") == tmp_path / "xdg" / "mivae" / "mnist"
    monkeypatch.setenv("MIVAE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir("mnist") == tmp_path / "env" / "mnist"  # nothing there yet: a folder per dataset
    assert resolve_data_dir("mnist", tmp_path / "option") == tmp_path / "option" / "mnist"


def test_a_data_folder_holds_datasets_or_one_datasets_files(mnist_dir, tmp_path):
    # A folder of dataset folders: each dataset finds its own.
    (tmp_path / "root" / "fashion-mnist").mkdir(parents=True)
    (tmp_path / "root" / "mnist").symlink_to(mnist_dir)
    assert resolve_data_dir("mnist", tmp_path / "root") == tmp_path / "root" / "mnist"
    assert resolve_data_dir("fashion-mnist", tmp_path / "root") == tmp_path / "root" / "fashion-mnist"
    # A folder holding the files themselves is used as it is.
    assert resolve_data_dir("mnist", mnist_dir) == mnist_dir
    assert load_idx_dataset("mnist", tmp_path / "root", download=False)[1].class_counts().tolist() == MNIST_TEST_COUNTS


# ---------------------------------------------------------------------------------------
# Bad files: each one clear error naming the file


def _images(n=3, h=28, w=28):
    return np.arange(n * h * w, dtype=np.int64).reshape(n, h, w) % 256


def _damaged_gzip():
    raw = bytearray(gzip.compress(idx_bytes(_images())))
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the deflate stream
    return bytes(raw)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (_damaged_gzip(), "not a valid gzip file"),
        (gzip.compress(idx_bytes(_images()))[:-40], "is truncated: its gzip stream ends early"),
        (
            gzip.compress(idx_bytes(_images())[:-5]),
            r"is truncated: its header promises 3x28x28 values but it holds 2347",
        ),
        (gzip.compress(idx_bytes(_images()) + b"\0\0"), "2 bytes beyond the 3x28x28 values"),
        (
            gzip.compress(idx_bytes(np.arange(5))),
            r"not an IDX image file: magic number 2049 \(0x00000801\), expected 2051",
        ),
        (gzip.compress(idx_bytes(_images(), dtype_code=0x0D)), "not an IDX image file: magic number 3331"),
        (gzip.compress(b"\0\0\x08"), r"too short to be an IDX image file \(3 bytes\)"),
        (gzip.compress(idx_bytes(_images())[:12]), r"too short to be an IDX image file \(12 bytes\)"),
        (b"<html>404 Not Found</html>", "not an IDX image file"),
    ],
    ids=[
        "empty",
        "not-gzip",
        "truncated-gzip",
        "truncated-data",
        "trailing-bytes",
        "labels-for-images",
        "float-type",
        "short-magic",
        "short-header",
        "html",
    ],
)
def test_bad_image_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(MivaeError, match=message) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


def test_good_idx_file_reads_back_compressed_or_not(tmp_path):
    images = _images(4, 5, 7)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}", images, compress=compress)
        assert np.array_equal(read_idx(path, ndim=3), images)


def _copy_mnist(mnist_dir, folder):
    folder.mkdir()
    for entry in MNIST.files:
        shutil.copy(mnist_dir / entry.name, folder / entry.name)
    return folder


def test_structurally_valid_file_with_altered_content_fails_its_checksum(mnist_dir, tmp_path):
    folder = _copy_mnist(mnist_dir, tmp_path / "mnist")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz", ndim=1).copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(MivaeError, match="t10k-labels-idx1-ubyte.gz does not match the published SHA-256"):
        load_idx_dataset("mnist", folder, download=False)


def _recompressed(source, folder, files, how):
    """Copies the IDX `files` from `source` into `folder` as `how` says: "level 1" (gzip anew at level 1, with no
    name or time in its header) or "plain" (decompressed); returns the folder."""
    folder.mkdir()
    for entry in files:
        content = gzip.decompress((source / entry.name).read_bytes())
        if how == "plain":
            (folder / entry.name.removesuffix(".gz")).write_bytes(content)
        else:
            (folder / entry.name).write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    return folder


@pytest.mark.parametrize("how", ["level 1", "plain"])
def test_a_copy_of_mnist_is_known_by_its_content_however_compressed(mnist_dir, tmp_path, how):
    folder = _recompressed(mnist_dir, tmp_path / "mnist", MNIST.files, how)
    if how == "level 1":  # other bytes than the published archive's, the same content
        assert (folder / MNIST.train_images.name).read_bytes() != (mnist_dir / MNIST.train_images.name).read_bytes()
    train, test = load_idx_dataset("mnist", folder, download=False)
    assert (len(train), len(test)) == (60_000, 10_000)


# Debian's dataset-fashion-mnist package: the official files compressed anew (their gzip headers differ, so their
# MD5s are not the published ones). .ci/run installs it; elsewhere the test skips.
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_debians_recompressed_fashion_mnist_is_accepted_and_one_byte_changed_is_not(tmp_path):
    if not (DEBIAN_FASHION / FASHION_MNIST.test_labels.name).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Debian's dataset-fashion-mnist package is not installed ({DEBIAN_FASHION}).")
        pytest.skip("Debian's dataset-fashion-mnist package is not installed")
    raw = (DEBIAN_FASHION / FASHION_MNIST.test_labels.name).read_bytes()
    assert hashlib.md5(raw, usedforsecurity=False).hexdigest() != "bb300cfdad3c16e7a12a480ee83cd310"  # not as published
    train, test = load_idx_dataset("fashion-mnist", DEBIAN_FASHION, download=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert np.bincount(test.labels).tolist() == [1_000] * 10
    folder = _recompressed(DEBIAN_FASHION, tmp_path / "fashion", FASHION_MNIST.files, "plain")
    labels = folder / FASHION_MNIST.test_labels.name.removesuffix(".gz")
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # a valid label still, so only the digest can tell
    labels.write_bytes(bytes(content))
    with pytest.raises(MivaeError, match="t10k-labels-idx1-ubyte does not match the published SHA-256"):
        load_idx_dataset("fashion-mnist", folder, download=False)


def test_wrong_image_size_and_count_mismatch_are_named(mnist_dir, tmp_path):
    folder = _copy_mnist(mnist_dir, tmp_path / "mnist")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10_000, 27, 28)))
    with pytest.raises(MivaeError, match="holds 27x28 images; MNIST images are 28x28"):
        load_idx_dataset("mnist", folder, download=False, verify=False)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((9_999, 28, 28)))
    with pytest.raises(MivaeError, match="MNIST test files hold 9999 images and 10000 labels; expected 10000 of each"):
        load_idx_dataset("mnist", folder, download=False, verify=False)


def test_label_out_of_range_is_named(mnist_dir, tmp_path):
    folder = _copy_mnist(mnist_dir, tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(10_000, 12))
    with pytest.raises(MivaeError, match="holds label 12; MNIST labels run from 0 to 9"):
        load_idx_dataset("mnist", folder, download=False, verify=False)


def test_missing_files_without_download_say_where_to_put_them(tmp_path):
    with pytest.raises(
        MivaeError,
        match=f"not in {tmp_path / 'mnist'}; put the four MNIST files there, or point --data-dir or MIVAE_DATA_DIR",
    ):
        load_idx_dataset("mnist", tmp_path, download=False)


# ---------------------------------------------------------------------------------------
# Fashion-MNIST: the same reader, its own digests


def _fake_fashion(folder, n_train=60_000, n_test=10_000):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for entry, shape in zip(FASHION_MNIST.files, [(n_train, 28, 28), (n_train,), (n_test, 28, 28), (n_test,)]):
        high = 256 if len(shape) == 3 else 10
        write_idx(folder / entry.name, rng.integers(0, high, size=shape))
    return folder


def test_fashion_mnist_goes_through_the_same_reader(tmp_path):
    folder = _fake_fashion(tmp_path / "fashion")
    splits = load_splits("fashion-mnist", folder, verify=False)
    assert [len(s) for s in splits] == [50_000, 10_000, 10_000]
    with pytest.raises(
        MivaeError, match="does not match the published SHA-256 of train-images-idx3-ubyte.gz's content"
    ):
        load_splits("fashion-mnist", folder)


def test_mnist_files_are_refused_as_fashion_mnist(mnist_dir):
    with pytest.raises(MivaeError, match="another dataset's file"):
        load_idx_dataset("fashion-mnist", mnist_dir)


# ---------------------------------------------------------------------------------------
# Downloading, from a mirror on this machine


@pytest.fixture
def mirror(tmp_path):
    """Serves a folder over HTTP on loopback; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_verifies_and_loads(mnist_dir, mirror, tmp_path, monkeypatch):
    served, url = mirror
    for entry in MNIST.files:
        shutil.copy(mnist_dir / entry.name, served / entry.name)
    monkeypatch.setenv("MIVAE_MIRRORS", f"http://127.0.0.1:9/nothing-here/,{url}")  # first mirror is down
    train, test = load_idx_dataset("mnist")  # into the cache
    cached = tmp_path / "cache" / "mivae" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(e.name for e in MNIST.files)
    assert train.class_counts().tolist() == MNIST_TRAIN_COUNTS and len(test) == 10_000


def test_download_refuses_a_mirror_serving_the_wrong_file(mnist_dir, mirror, tmp_path, monkeypatch):
    served, url = mirror
    for entry in MNIST.files:
        shutil.copy(mnist_dir / entry.name, served / entry.name)
    write_idx(served / "t10k-labels-idx1-ubyte.gz", np.zeros(10_000))  # well-formed, wrong content
    monkeypatch.setenv("MIVAE_MIRRORS", url)
    target = tmp_path / "target"
    with pytest.raises(
        MivaeError,
        match="t10k-labels-idx1-ubyte.gz is not in .* could not be downloaded .*does not match the published SHA-256",
    ):
        fetch("mnist", target)
    # The good files stay; the bad one is not left behind, not even half-written.
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(
        e.name for e in MNIST.files if e is not MNIST.test_labels
    )


def test_offline_download_fails_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("MIVAE_MIRRORS", "http://127.0.0.1:9/")
    with pytest.raises(MivaeError) as info:
        load_idx_dataset("mnist", tmp_path / "nowhere")
    message = str(info.value)
    assert not (tmp_path / "nowhere").exists()  # no empty folder left behind
    assert message.startswith("MNIST file train-images-idx3-ubyte.gz is not in")
    assert "\n" not in message and message.endswith("folder that holds them.")

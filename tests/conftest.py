import gzip
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _mnist_dir():
    env = os.environ.get("MIVAE_DATA_DIR")
    candidates = [Path(env), Path(env) / "mnist"] if env else []
    for candidate in [*candidates, REPO.parent / "shared" / "data" / "mnist"]:
        if (candidate / "t10k-labels-idx1-ubyte.gz").is_file():
            return candidate
    return None


_MNIST_DIR = _mnist_dir()  # read once, before any test changes the environment


@pytest.fixture(scope="session")
def mnist_dir():
    """The folder holding the real MNIST files; CI must have it, elsewhere tests skip."""
    folder = _MNIST_DIR
    if folder is None:
        if os.environ.get("CI"):
            pytest.fail("MNIST files not found: set MIVAE_DATA_DIR to the folder holding them.")
        pytest.skip("MNIST files not found (set MIVAE_DATA_DIR)")
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the real user cache, or sees the caller's data folder unless it asks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MIVAE_DATA_DIR", raising=False)
    monkeypatch.delenv("MIVAE_MIRRORS", raising=False)


def idx_bytes(array, dtype_code=0x08):
    """The IDX encoding of a uint8 array: magic, big-endian dimensions, then the values."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    """Writes `array` as an IDX file at `path`, gzip-compressed by default; returns the path."""
    data = idx_bytes(array)
    Path(path).write_bytes(gzip.compress(data) if compress else data)
    return Path(path)

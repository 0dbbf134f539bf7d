import subprocess
import sys

import matplotlib.image
import pytest

from mivae.cli import main


def run(capsys, *argv):
    """Runs `mivae argv` in this process; returns (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "mivae", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("data", "corrupt"):
        assert command in result.stdout


def test_data_info_prints_split_sizes_and_class_counts(capsys):
    status, out, _ = run(capsys, "data", "info", "--dataset", "digits")
    assert status == 0
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in out.splitlines()[2:]}
    assert list(rows) == ["train", "val", "test"]
    assert [r[0] for r in rows.values()] == [1079, 359, 359]
    assert all(sum(r[1:]) == r[0] for r in rows.values())


def test_data_info_on_mnist(capsys, mnist_dir):
    status, out, _ = run(capsys, "data", "info", "--data-dir", str(mnist_dir))
    assert status == 0
    assert out.splitlines()[0].startswith("dataset mnist: 70000 images of 28x28 pixels, 10 classes")
    assert out.splitlines()[-1].split()[:3] == ["test", "10000", "980"]


def test_corrupt_draws_the_original_and_ever_whiter_versions(tmp_path, mnist_dir, capsys):
    out = tmp_path / "figures" / "figure9.png"
    status, _, _ = run(capsys, "corrupt", "--method", "random-pixels", "--levels", "0.5,0.9", "--out", str(out), "--data-dir", str(mnist_dir))
    assert status == 0
    picture = matplotlib.image.imread(out)[..., :3].mean(axis=2)  # (height, width) grey levels
    height, width = picture.shape
    assert width > 2 * height  # one row of three panels
    thirds = [picture[:, i * width // 3 : (i + 1) * width // 3].mean() for i in range(3)]
    assert thirds[0] < thirds[1] < thirds[2]  # missing pixels are drawn white


def test_corrupt_runs_on_digits_as_installed(tmp_path):
    out = tmp_path / "figure4.svg"
    result = subprocess.run(
        [sys.executable, "-m", "mivae", "corrupt", "--dataset", "digits", "--method", "random-pixels,vertical-lines",
         "--levels", "0.5", "--index", "0,1", "--fill", "mean", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["corrupt", "--method", "random-pixels", "--levels", "1.5", "--out", "x.png"], "corruption level must be in [0, 1); got 1.5."),
        (["corrupt", "--method", "random-pixels", "--levels", "0.5,abc", "--out", "x.png"], "argument --levels: takes numbers separated by commas"),
        (["corrupt", "--method", "blocks", "--levels", "0.5", "--out", "x.png"], "unknown corruption method 'blocks'"),
        (["corrupt", "--method", "random-pixels", "--levels", "0.5", "--out", "x.jpeg"], "cannot tell the figure format of x.jpeg"),
        (["corrupt", "--method", "random-pixels", "--levels", "0.5", "--out", "x.png", "--dataset", "digits", "--index", "400"], "--index 400 is outside the test set"),
        (["corrupt", "--levels", "0.5", "--out", "x.png"], "the following arguments are required: --method"),
        (["data", "info", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["train"], "argument COMMAND: invalid choice: 'train'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_status_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert err.startswith("mivae: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_absent_data_offline_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("MIVAE_MIRRORS", "http://127.0.0.1:9/")
    result = subprocess.run(
        [sys.executable, "-m", "mivae", "data", "info", "--data-dir", str(tmp_path / "empty")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mivae: error: MNIST file train-images-idx3-ubyte.gz is not in")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""

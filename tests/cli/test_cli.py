import json
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
    commands = result.stdout.split("COMMAND\n", 1)[1]  # the listing after "positional arguments: COMMAND"
    listed = [
        line.split()[0] for line in commands.splitlines() if line.startswith("    ") and not line.startswith("      ")
    ]
    assert listed == ["data", "corrupt", "train", "evaluate", "search", "reproduce", "report", "impute", "classify"]


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
    status, _, _ = run(
        capsys,
        "corrupt",
        "--method",
        "random-pixels",
        "--levels",
        "0.5,0.9",
        "--out",
        str(out),
        "--data-dir",
        str(mnist_dir),
    )
    assert status == 0
    picture = matplotlib.image.imread(out)[..., :3].mean(axis=2)  # (height, width) grey levels
    height, width = picture.shape
    assert width > 2 * height  # one row of three panels
    thirds = [picture[:, i * width // 3 : (i + 1) * width // 3].mean() for i in range(3)]
    assert thirds[0] < thirds[1] < thirds[2]  # missing pixels are drawn white


def test_corrupt_runs_on_digits_as_installed(tmp_path):
    out = tmp_path / "figure4.svg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mivae",
            "corrupt",
            "--dataset",
            "digits",
            "--method",
            "random-pixels,vertical-lines",
            "--levels",
            "0.5",
            "--index",
            "0,1",
            "--fill",
            "mean",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["corrupt", "--method", "random-pixels", "--levels", "1.5", "--out", "x.png"],
            "corruption level must be in [0, 1); got 1.5.",
        ),
        (
            ["corrupt", "--method", "random-pixels", "--levels", "0.5,abc", "--out", "x.png"],
            "argument --levels: takes numbers separated by commas",
        ),
        (["corrupt", "--method", "blocks", "--levels", "0.5", "--out", "x.png"], "unknown corruption method 'blocks'"),
        (
            ["corrupt", "--method", "random-pixels", "--levels", "0.5", "--out", "x.jpeg"],
            "cannot tell the figure format of x.jpeg",
        ),
        (
            [
                "corrupt",
                "--method",
                "random-pixels",
                "--levels",
                "0.5",
                "--out",
                "x.png",
                "--dataset",
                "digits",
                "--index",
                "400",
            ],
            "--index 400 is outside the test set",
        ),
        (["corrupt", "--levels", "0.5", "--out", "x.png"], "the following arguments are required: --method"),
        (["data", "info", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["fly"], "argument COMMAND: invalid choice: 'fly'"),
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
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mivae: error: MNIST file train-images-idx3-ubyte.gz is not in")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------
# train and evaluate


def test_train_and_evaluate_type_2_on_digits(tmp_path, capsys):
    data = ["--dataset", "digits", "--corruption", "random-pixels", "--level", "0.5", "--batch-size", "32"]
    status, out, _ = run(
        capsys,
        "train",
        "vae",
        *data,
        "--hidden",
        "128",
        "--latent",
        "8",
        "--epochs",
        "60",
        "--patience",
        "10",
        "--out",
        str(tmp_path / "vae"),
    )
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()[:3]] == ["epoch"] * 3
    assert "val_negative_elbo" in out
    status, out, _ = run(
        capsys,
        "train",
        "vae+mlp",
        *data,
        "--vae",
        str(tmp_path / "vae"),
        "--hidden",
        "64,64",
        "--epochs",
        "30",
        "--out",
        str(tmp_path / "vm"),
    )
    assert status == 0
    status, out, _ = run(capsys, "evaluate", str(tmp_path / "vm"), "--samples", "1,5,20")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("vae+mlp on digits random-pixels 50%, 359 test images, ")
    single = float(lines[1].split()[-1])
    assert single > 0.3  # far above chance (0.1); about 0.4 on half-missing 8x8 digits
    assert lines[-1].startswith("health check: passed: accuracy ")
    assert [line.split()[2] for line in lines[2:-1]] == ["M=1", "M=5", "M=20"]
    saved = json.loads((tmp_path / "vm" / "evaluation.json").read_text())
    assert len(saved["accuracy_curve"]) == 20 and saved["single_accuracy"] == pytest.approx(single, abs=1e-4)
    assert sum(saved["multiple"]["20"]["class_distribution"]) == 359


def test_train_type_1_on_an_mnist_slice(tmp_path, mnist_dir, capsys):
    data = ["--data-dir", str(mnist_dir), "--limit", "2000", "--corruption", "vertical-lines", "--level", "0.5"]
    status, out, _ = run(
        capsys,
        "train",
        "mlp",
        *data,
        "--hidden",
        "256,256",
        "--epochs",
        "5",
        "--batch-size",
        "32",
        "--out",
        str(tmp_path / "mlp"),
    )
    assert status == 0
    metrics = json.loads((tmp_path / "mlp" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3  # three times chance after 315 AdaDelta steps (0.44 measured)
    status, out, _ = run(capsys, "evaluate", str(tmp_path / "mlp"), "--data-dir", str(mnist_dir))
    assert out.splitlines()[1] == f"accuracy {metrics['test_accuracy']:.4f}"  # the saved model, the same test images


def test_clean_trained_classifier_is_tested_directly_and_on_an_imputation(tmp_path, capsys):
    common = ["--dataset", "digits", "--level", "0.5"]
    assert (
        run(
            capsys,
            "train",
            "vae",
            *common,
            "--hidden",
            "32",
            "--latent",
            "4",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "vae"),
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "train",
            "mlp",
            *common,
            "--clean-train",
            "--hidden",
            "32,32",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "mlp"),
        )[0]
        == 0
    )
    status, out, _ = run(capsys, "evaluate", str(tmp_path / "mlp"), "--vae", str(tmp_path / "vae"))
    assert status == 0
    saved = json.loads((tmp_path / "mlp" / "evaluation.json").read_text())
    direct, imputed, z = saved["accuracy"], saved["accuracy_on_one_vae_imputation"], saved["z_imputation_vs_direct"]
    lines = out.splitlines()
    assert lines[1] == f"accuracy {direct:.4f}"
    assert lines[2] == f"accuracy on one VAE imputation {imputed:.4f}  (z vs direct {z:+.2f})"
    # two different tests of the same 359 images: z has the sign of the gain and is 0 only where they agree
    assert 0 <= direct <= 1 and 0 <= imputed <= 1 and (z > 0) == (imputed > direct) and (z == 0) == (imputed == direct)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "mlp", "--dataset", "digits", "--latent", "4", "--out", "r"],
            "--latent does not apply to mlp models.",
        ),
        (
            ["train", "vae+mlp", "--dataset", "digits", "--epochs", "1", "--out", "r"],
            "pass --vae with a trained vae run",
        ),
        (
            ["train", "mlp", "--dataset", "digits", "--level", "1.2", "--out", "r"],
            "corruption level must be in [0, 1); got 1.2.",
        ),
        (["train", "mlp", "--config", "missing.toml", "--out", "r"], "cannot read the config file missing.toml"),
        (["evaluate", "nowhere"], "run directory nowhere does not exist."),
        (
            ["train", "mlp", "--dataset", "digits", "--seed", "-1", "--out", "r"],
            "seed must be a whole number of at least 0; got -1.",
        ),
        (["data", "info", "--dataset", "digits", "--seed", "-1"], "seed must be a whole number of at least 0; got -1."),
        (
            ["train", "mlp", "--dataset", "digits", "--batch-size", "0", "--out", "r"],
            "batch_size must be a whole number from 1 to 1,048,576; got 0.",
        ),
        (
            ["train", "mlp", "--dataset", "digits", "--hidden", ",", "--out", "r"],
            "hidden needs 1 to 16 layers of 1 to 65,536 nodes; got [].",
        ),
        (
            ["train", "mlp", "--dataset", "digits", "--limit", "0", "--out", "r"],
            "limit must be a whole number of at least 1 or None; got 0.",
        ),
        (
            ["train", "cnn", "--dataset", "digits", "--dropout-conv", "1.5", "--out", "r"],
            "dropout_conv must be in [0, 1); got 1.5.",
        ),
        (
            ["train", "mlp", "--dataset", "digits", "--threads", "-1", "--out", "r"],
            "--threads must be a whole number of at least 1; got -1.",
        ),
        (["evaluate", ".", "--samples", ","], "--imputations must be whole numbers of at least 1"),
        (["search", "--out", "s"], "mivae search needs a KIND and --out, or --show-space."),
        (["search", "mlp", "--out", "s", "--trials", "0"], "--trials must be a whole number of at least 1; got 0."),
        (["search", "vae+mlp", "--dataset", "digits", "--out", "s"], "pass --vae with the selected VAE's final run."),
        (["evaluate", "."], "is not a mivae run directory: config.json is missing."),
        (
            ["train", "mlp", "--dataset", "digits", "--refine", "8", "--out", "r"],
            "--refine does not apply to mlp models.",
        ),
        (
            ["train", "not-miwae", "--dataset", "digits", "--refine", "8", "--out", "r"],
            "local refinement (refine) is for miwae",
        ),
        (
            ["train", "miwae", "--dataset", "digits", "--refine", "8", "--holdout", "1", "--out", "r"],
            "holdout must be in (0, 1)",
        ),
    ],
)
def test_bad_train_and_evaluate_input_is_one_sentence(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, *argv)
    assert status == 2 and message in err and err.count("\n") == 1


def test_a_miwae_with_local_refinement_trains_saves_and_evaluates_as_it_was(tmp_path, capsys):
    from mivae.images.runs import load_run

    common = ["--dataset", "digits", "--level", "0.5", "--hidden", "64", "--latent", "4", "--epochs", "3"]
    assert (
        run(
            capsys,
            "train",
            "miwae",
            *common,
            "--refine",
            "8",
            "--holdout-shape",
            "columns",
            "--out",
            str(tmp_path / "r"),
        )[0]
        == 0
    )
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["refine"] == 8 and saved["model"]["holdout_shape"] == "columns"
    model = load_run(tmp_path / "r").model
    assert model.refine is not None and model.holdout_shape == "columns"
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    status, out, _ = run(capsys, "evaluate", str(tmp_path / "r"))
    assert status == 0 and f"{metrics['test_rmse_missing']:.4f}" in out  # the saved model imputes as it did in training
    assert run(capsys, "train", "miwae", *common, "--out", str(tmp_path / "plain"))[0] == 0
    assert (
        "refine" not in json.loads((tmp_path / "plain" / "config.json").read_text())["model"]
    )  # as runs saved before it


def test_search_shows_its_spaces(capsys):
    status, out, _ = run(capsys, "search", "--show-space")
    assert status == 0
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")][:3] == [
        "vae",
        "mlp (searched separately with 2, 3, 4 layers)",
        "cnn",
    ]


def test_unknown_config_key_is_refused(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[model]\nhiden = [10]\n")
    status, _, err = run(
        capsys, "train", "mlp", "--dataset", "digits", "--config", str(config), "--out", str(tmp_path / "r")
    )
    assert status == 2 and "unknown setting 'hiden' in [model]; known settings are hidden, l2, lr" in err


def test_the_imputer_run_is_named_by_imputer_or_by_its_earlier_name_vae():
    from mivae.cli import build_parser

    for flag in ("--imputer", "--vae"):
        args = build_parser().parse_args(["train", "miwae+mlp", "--out", "r", flag, "runs/miwae"])
        assert args.vae == "runs/miwae"
        assert build_parser().parse_args(["evaluate", "runs/mlp", flag, "runs/vae"]).vae == "runs/vae"

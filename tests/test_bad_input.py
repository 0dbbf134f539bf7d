"""The bad-input corpus: every way a user can get a file, a name or a number wrong, through the CLI and the API.

Each CLI case must end with exit status 2 and one line on stderr that names what was wrong (and,
where there is a choice, what is accepted), with no traceback, and must leave nothing written where
the command was asked to write. Each API case must raise ValueError or TypeError with such a sentence.
"""

import gzip
import json
import pickle
import re
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from mivae.cli import main
from mivae.images.corruption import corrupt
from mivae.images.runs import _architecture_digest, load_run
from mivae.tables.amputation import ampute
from mivae.tables.estimators import MIWAEImputer, MultipleImputationClassifier, VAEImputer


@pytest.fixture(scope="module")
def files(tmp_path_factory, mnist_dir):
    """Damaged MNIST folders, bad tables and a small trained run to damage, made once."""
    root = tmp_path_factory.mktemp("bad")
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    for folder, damage in {"empty": lambda b: b"", "truncated": lambda b: b[:3000], "magic": None}.items():
        (root / folder).mkdir()
        for name in names:
            data = (mnist_dir / name).read_bytes()
            if damage is None and name.startswith("t10k-labels"):
                raw = gzip.decompress(data)
                data = gzip.compress(b"\x00\x00\x09\x01" + raw[4:])  # an IDX file whose magic is not a label file's
            (root / folder / name).write_bytes(damage(data) if damage else data)
    (root / "altered").mkdir()  # MNIST decompressed (a copy accepted by its content), one label changed
    for name in names:
        content = bytearray(gzip.decompress((mnist_dir / name).read_bytes()))
        if name.startswith("t10k-labels"):
            content[-1] = (content[-1] + 1) % 10  # still a valid label: only the digest tells
        (root / "altered" / name.removesuffix(".gz")).write_bytes(bytes(content))
    (root / "missing").mkdir()
    (root / "a-file").write_text("not a folder")
    (root / "words.csv").write_text("a,b\n1,2\n3,x7\n5,6\n")
    (root / "header.csv").write_text("a,b\n")
    (root / "all-missing.csv").write_text("a,b\n,\n,\n")
    (root / "labels.csv").write_text("a,b,c\n1,2,x\n2,,y\n3,4,\n")
    (root / "config.toml").write_text("[model]\nhiden = [64]\n")
    status = main(
        [
            "train",
            "mlp",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--limit",
            "300",
            "--threads",
            "1",
            "--out",
            str(root / "run"),
        ]
    )
    assert status == 0
    return root


def _copy_run(files, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    damage(run)
    return run


def _other_configuration(run):
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = [17, 17]
    (run / "config.json").write_text(json.dumps(config))


def _edited(file, change):
    """A damage that applies `change` to the JSON content of the run's `file` in place."""

    def damage(run):
        content = json.loads((run / file).read_text())
        change(content)
        (run / file).write_text(json.dumps(content))

    return damage


def _architecture_the_weights_lack(run):
    """Layers within every bound, with the weights' digest redone to match: only the header's shapes tell."""
    _edited("config.json", lambda c: c["model"].update(hidden=[60_000, 512]))(run)
    config = json.loads((run / "config.json").read_text())
    state = load_file(str(run / "model.safetensors"))
    save_file(state, str(run / "model.safetensors"), metadata={"architecture_sha256": _architecture_digest(config)})


def _truncated_weights(run):
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


class Payload:
    """Unpickling this runs code: it would create the file named `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_weights(run):
    (run / "model.safetensors").write_bytes(pickle.dumps(Payload(run / "PWNED")))


# (argv, the sentence must contain, the path that must not have been written); {root}, {tmp} and {run} are filled in.
CLI_CASES = {
    "IDX files missing": (["data", "info", "--data-dir", "{root}/missing"], "is not in", None),
    "IDX file empty": (["data", "info", "--data-dir", "{root}/empty"], "is empty", None),
    "IDX file truncated": (["data", "info", "--data-dir", "{root}/truncated"], "is truncated", None),
    "IDX file of the wrong magic": (["data", "info", "--data-dir", "{root}/magic"], "magic number 2305", None),
    "a copy of the dataset with one label changed": (
        ["data", "info", "--data-dir", "{root}/altered"],
        "t10k-labels-idx1-ubyte does not match the published SHA-256 of t10k-labels-idx1-ubyte.gz's content",
        None,
    ),
    "unknown dataset": (["data", "info", "--dataset", "cifar"], "invalid choice: 'cifar' (choose from", None),
    "a device mivae does not run on": (
        ["train", "mlp", "--dataset", "digits", "--device", "tpu", "--out", "{tmp}/run"],
        "device 'tpu' is not a device; expected auto, cpu, cuda or cuda:N.",
        "{tmp}/run",
    ),
    "a GPU that is not there": (
        ["train", "mlp", "--dataset", "digits", "--device", "cuda:7", "--out", "{tmp}/run"],
        "device 'cuda:7' is not available: this torch sees",
        "{tmp}/run",
    ),
    "CSV with a word in a numeric column": (
        ["impute", "{root}/words.csv", "--out", "{tmp}/out"],
        "row 2 holds 'x7'",
        "{tmp}/out",
    ),
    "CSV with no rows": (
        ["impute", "{root}/header.csv", "--out", "{tmp}/out"],
        "has a header but no rows",
        "{tmp}/out",
    ),
    "CSV whose every column is missing": (
        ["impute", "{root}/all-missing.csv", "--out", "{tmp}/out"],
        "every column is missing in every row",
        "{tmp}/out",
    ),
    "table of an unknown format": (
        ["impute", "{root}/config.toml", "--out", "{tmp}/out"],
        "neither CSV nor Parquet",
        "{tmp}/out",
    ),
    "level -0.1": (
        ["corrupt", "--dataset", "digits", "--method", "random-pixels", "--levels", "-0.1", "--out", "{tmp}/f.png"],
        "corruption level must be in [0, 1); got -0.1",
        "{tmp}/f.png",
    ),
    "level 1.0": (
        ["corrupt", "--dataset", "digits", "--method", "random-pixels", "--levels", "1.0", "--out", "{tmp}/f.png"],
        "corruption level must be in [0, 1); got 1.0",
        "{tmp}/f.png",
    ),
    "level abc": (
        ["corrupt", "--dataset", "digits", "--method", "random-pixels", "--levels", "abc", "--out", "{tmp}/f.png"],
        "takes numbers separated by commas",
        "{tmp}/f.png",
    ),
    "training level 1.0": (
        ["train", "mlp", "--dataset", "digits", "--level", "1.0", "--out", "{tmp}/run"],
        "level must be in [0, 1)",
        "{tmp}/run",
    ),
    "unknown corruption method": (
        ["corrupt", "--dataset", "digits", "--method", "zigzag", "--levels", "0.5", "--out", "{tmp}/f.png"],
        "unknown corruption method 'zigzag'; expected one of",
        "{tmp}/f.png",
    ),
    "unknown model kind": (
        ["train", "resnet", "--out", "{tmp}/run"],
        "invalid choice: 'resnet' (choose from",
        "{tmp}/run",
    ),
    "unknown preset": (
        ["reproduce", "--preset", "huge", "--out", "{tmp}/study"],
        "unknown preset 'huge'; known presets",
        "{tmp}/study",
    ),
    "unknown config key": (
        ["train", "mlp", "--dataset", "digits", "--config", "{root}/config.toml", "--out", "{tmp}/run"],
        "hiden",
        "{tmp}/run",
    ),
    "zero samples to evaluate": (
        ["evaluate", "{run}", "--samples", "0"],
        "--imputations must be whole numbers of at least 1",
        None,
    ),
    "negative imputations": (
        ["impute", "{root}/labels.csv", "--samples", "-3", "--out", "{tmp}/out"],
        "--imputations must be a whole number of at least 1; got -3",
        "{tmp}/out",
    ),
    "zero trials": (
        ["search", "mlp", "--dataset", "digits", "--trials", "0", "--out", "{tmp}/search"],
        "--trials must be a whole number of at least 1; got 0",
        "{tmp}/search",
    ),
    "negative trials": (
        ["search", "mlp", "--dataset", "digits", "--trials", "-2", "--out", "{tmp}/search"],
        "--trials must be a whole number of at least 1; got -2",
        "{tmp}/search",
    ),
    "zero threads": (
        ["train", "mlp", "--dataset", "digits", "--threads", "0", "--out", "{tmp}/run"],
        "--threads must be a whole number of at least 1; got 0",
        "{tmp}/run",
    ),
    "unknown setting": (
        ["reproduce", "--preset", "smoke", "--settings", "rp70,rp60", "--out", "{tmp}/study"],
        "unknown setting 'rp60'; known settings are rp50, rp70, rp90, vl50, vl70, vl90",
        "{tmp}/study",
    ),
    "zero limit": (
        ["reproduce", "--preset", "smoke", "--limit", "0", "--out", "{tmp}/study"],
        "--limit must be a whole number of at least 1; got 0",
        "{tmp}/study",
    ),
    "training output under a file": (
        ["train", "mlp", "--dataset", "digits", "--epochs", "1", "--out", "{root}/a-file/run"],
        "is a file, not a folder",
        None,
    ),
    "imputation output under a file": (
        ["impute", "{root}/labels.csv", "--out", "{root}/a-file/out"],
        "is a file, not a folder",
        None,
    ),
    "figure under a file": (
        [
            "corrupt",
            "--dataset",
            "digits",
            "--method",
            "random-pixels",
            "--levels",
            "0.5",
            "--out",
            "{root}/a-file/f.png",
        ],
        "is a file, not a folder",
        None,
    ),
    "study under a file": (["reproduce", "--preset", "smoke", "--out", "{root}/a-file/study"], "Not a directory", None),
    "target column absent": (["classify", "{root}/labels.csv", "--target", "z"], "target column 'z' is not in", None),
    "target column missing in a row": (
        ["classify", "{root}/labels.csv", "--target", "c"],
        "target column 'c' is missing in 1 of 3 rows",
        None,
    ),
    "not a run directory": (["evaluate", "{tmp}"], "config.json", None),
    "a diverging training": (
        ["train", "vae", "--dataset", "digits", "--epochs", "2", "--lr", "100", "--threads", "1", "--out", "{tmp}/run"],
        "training diverged: the loss went from",
        "{tmp}/run",
    ),
}

RUN_DAMAGE = {
    "model file of another configuration": (_other_configuration, "saved for another configuration"),
    "layers of two billion nodes": (
        _edited("config.json", lambda c: c["model"].update(hidden=[2_000_000_000, 512])),
        "config.json is damaged: its model settings are wrong: hidden needs 1 to 16 layers of 1 to 65,536 nodes",
    ),
    "-3 classes": (
        _edited("config.json", lambda c: c.update(n_classes=-3)),
        "config.json is damaged: n_classes must be a whole number from 2 to 100,000; got -3",
    ),
    "an architecture its weights do not hold": (
        _architecture_the_weights_lack,
        "does not hold the weights of the network that",
    ),
    "an unknown field in config.json": (
        _edited("config.json", lambda c: c.update(layers=3)),
        "config.json is damaged: the file holds the unknown field 'layers'",
    ),
    "an unknown setting in config.json": (
        _edited("config.json", lambda c: c["train"].update(momentum=0.9)),
        "config.json is damaged: unknown setting 'momentum' in [train]",
    ),
    "a setting of the wrong type": (
        _edited("config.json", lambda c: c["model"].update(lr="fast")),
        "config.json is damaged: model.lr must be a number; got 'fast'",
    ),
    "a dataset mivae does not have": (
        _edited("config.json", lambda c: c["data"].update(dataset="cifar")),
        "config.json is damaged: its data settings are wrong: unknown dataset 'cifar'",
    ),
    "images of another shape than the dataset's": (
        _edited("config.json", lambda c: c.update(image_shape=[28, 28])),
        "are not those of digits (8x8 images, 10 classes)",
    ),
    "a config.json that is a list": (
        lambda run: (run / "config.json").write_text("[1, 2]"),
        "config.json is damaged: the file must be an object; got [1, 2]",
    ),
    "a damaged history": (
        _edited("history.json", lambda h: h.update(train_loss="low")),
        'history.json is damaged: train_loss must be a list; got "low"',
    ),
    "damaged metrics": (
        _edited("metrics.json", lambda m: m.update(health="fine")),
        'metrics.json is damaged: health must be an object; got "fine"',
    ),
    "damaged model file": (_truncated_weights, "is damaged or not a safetensors file"),
    "model file that is a malicious pickle": (_malicious_weights, "is damaged or not a safetensors file"),
}


def _check_one_sentence(status, err, expected):
    assert status == 2, err
    assert err.startswith("mivae: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_cli_refuses_bad_input_in_one_sentence_and_writes_nothing(case, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIVAE_MIRRORS", "http://127.0.0.1:9")  # a closed port: "missing" fails at once, offline
    argv, expected, unwritten = CLI_CASES[case]
    fill = {"root": files, "tmp": tmp_path, "run": files / "run"}
    status = main([a.format(**fill) for a in argv])
    _, err = capsys.readouterr()
    _check_one_sentence(status, err, expected)
    if unwritten:
        assert not (tmp_path / unwritten.format(**fill).split("/")[-1]).exists()


@pytest.mark.parametrize("case", RUN_DAMAGE)
def test_a_damaged_or_foreign_model_file_is_refused_without_running_anything(case, files, tmp_path, capsys):
    damage, expected = RUN_DAMAGE[case]
    run = _copy_run(files, tmp_path, damage)
    status = main(["evaluate", str(run), "--threads", "1"])
    _, err = capsys.readouterr()
    _check_one_sentence(status, err, expected)
    assert not (run / "PWNED").exists()  # the pickle's code never ran
    assert not (run / "evaluation.json").exists()
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_run(run)
    assert not (run / "PWNED").exists()


def test_the_malicious_payload_is_real():
    """The pickle in the corpus does run code when unpickled, so its refusal above means something."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "PWNED"
        pickle.loads(pickle.dumps(Payload(marker))).close()
        assert marker.exists()


def test_no_code_path_unpickles_a_file():
    """mivae reads weights with safetensors and tables with pandas' CSV and Parquet readers, never with pickle."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "src" / "mivae"
    for path in source.rglob("*.py"):
        text = path.read_text()
        for call in ("pickle.load", "torch.load", "joblib.load", "allow_pickle=True", "read_pickle", "dill."):
            assert call not in text, f"{path.name} calls {call}"


IMAGES = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
TABLE = np.where(np.random.default_rng(1).random((40, 3)) < 0.2, np.nan, np.random.default_rng(2).normal(size=(40, 3)))

API_CASES = {
    "unknown corruption method": (
        lambda: corrupt(IMAGES, "zigzag", 0.5, seed=0, split="test"),
        "unknown corruption method 'zigzag'",
    ),
    "corruption level 1.5": (
        lambda: corrupt(IMAGES, "random-pixels", 1.5, seed=0, split="test"),
        "must be in [0, 1); got 1.5",
    ),
    "corruption level abc": (
        lambda: corrupt(IMAGES, "random-pixels", "abc", seed=0, split="test"),
        "must be a number in [0, 1)",
    ),
    "amputation rate abc": (lambda: ampute(np.ones((5, 2)), "abc"), "rate must be a number in [0, 1)"),
    "unknown amputation mechanism": (lambda: ampute(np.ones((5, 2)), 0.3, "sometimes"), "mechanism must be one of"),
    "negative learning rate": (lambda: VAEImputer(lr=-1).fit(TABLE), "lr must be a number in (0, inf)"),
    "zero imputations": (lambda: MIWAEImputer(max_epochs=1).fit(TABLE).sample(TABLE, 0), "n_imputations must be"),
    "feature-count mismatch": (
        lambda: VAEImputer(max_epochs=1).fit(TABLE).transform(TABLE[:, :2]),
        "X has 2 features, but VAEImputer is expecting 3 features",
    ),
    "a classifier without imputations": (
        lambda: MultipleImputationClassifier(imputer=object()).fit(TABLE, [0, 1] * 20),
        "imputer must be a VAEImputer or MIWAEImputer",
    ),
    "a missing run": (lambda: load_run("/nonexistent/run"), "run directory /nonexistent/run does not exist"),
    "an imputer on a GPU that is not there": (
        lambda: MIWAEImputer(device="cuda:7").fit(TABLE),
        "device 'cuda:7' is not available: this torch sees",
    ),
}


@pytest.mark.parametrize("case", API_CASES)
def test_the_api_refuses_bad_input_with_a_value_error_naming_it(case):
    call, expected = API_CASES[case]
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    assert expected in str(caught.value)
    assert str(caught.value).count("\n") == 0


def test_the_corpus_has_at_least_thirty_cases():
    assert len(CLI_CASES) + len(RUN_DAMAGE) + len(API_CASES) >= 30

"""End-to-end tests of `mivae impute` and `mivae classify` on small real tables, and of table files."""

import gzip

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from mivae.cli import main
from mivae.errors import MivaeError
from mivae.tables.amputation import ampute
from mivae.tables.io import read_table, write_table

FAST = ["--epochs", "15"]


def mixed_frame(rows=60, seed=0):
    """A table of every column type: floats, integers, text labels and true/false, with gaps."""
    rng = np.random.default_rng(seed)
    size = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "height": 1.7 + 0.1 * size,
            "age": rng.integers(20, 60, rows),
            "colour": np.where(size > 0.5, "red", np.where(size < -0.5, "blue", "green")),
            "member": size > 0,
            "weight": 70 + 8 * size + rng.normal(size=rows),
        }
    )
    holes = rng.random(frame.shape) < 0.2
    return frame.astype(object).mask(holes), holes


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_impute_round_trips_a_mixed_csv(tmp_path, capsys):
    frame, holes = mixed_frame()
    frame.to_csv(tmp_path / "people.csv", index=False)
    status, out, err = run(
        capsys, "impute", tmp_path / "people.csv", "--imputations", 3, "--single", "--out", tmp_path / "out", *FAST
    )
    assert status == 0, err
    assert "3 continuous and 2 categorical columns" in out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["people.imputed-1.csv", "people.imputed-2.csv", "people.imputed-3.csv", "people.single.csv"]
    original = pd.read_csv(tmp_path / "people.csv")
    tables = [pd.read_csv(tmp_path / "out" / name) for name in written]
    for table in tables:
        assert list(table.columns) == list(original.columns) and len(table) == len(original)
        assert not table.isna().any().any()
        assert set(table["colour"]) <= {"red", "green", "blue"}
        assert set(table["member"]) <= {True, False}
        for name in original.columns:  # observed entries come back exactly as read
            seen = original[name].notna()
            assert (table.loc[seen, name] == original.loc[seen, name]).all(), name
    missing_weight = original["weight"].isna()
    assert not np.allclose(tables[0].loc[missing_weight, "weight"], tables[1].loc[missing_weight, "weight"])


def test_impute_with_not_miwae_keeps_observed_entries_and_fills_every_type(tmp_path, capsys):
    frame, holes = mixed_frame()
    frame.to_csv(tmp_path / "people.csv", index=False)
    argv = ["--model", "not-miwae", "--missingness", "self-masking-high", "--imputations", 2, "--single"]
    status, out, err = run(capsys, "impute", tmp_path / "people.csv", *argv, "--out", tmp_path / "out", *FAST)
    assert status == 0, err
    original = pd.read_csv(tmp_path / "people.csv")
    for name in ("people.imputed-1.csv", "people.imputed-2.csv", "people.single.csv"):
        table = pd.read_csv(tmp_path / "out" / name)
        assert not table.isna().any().any() and set(table["colour"]) <= {"red", "green", "blue"}
        for column in original.columns:
            seen = original[column].notna()
            assert (table.loc[seen, column] == original.loc[seen, column]).all(), column


def fitted_imputers(monkeypatch, imputer_class):
    """A list that collects each imputer of `imputer_class` as its fit is called."""
    fitted = []
    fit = imputer_class.fit
    monkeypatch.setattr(imputer_class, "fit", lambda self, X, y=None: fitted.append(self) or fit(self, X, y))
    return fitted


def test_impute_passes_the_decoder_and_patience_to_the_imputer(tmp_path, capsys, monkeypatch):
    from mivae.tables.estimators import NotMIWAEImputer

    fitted = fitted_imputers(monkeypatch, NotMIWAEImputer)
    frame, _ = mixed_frame()
    frame.to_csv(tmp_path / "people.csv", index=False)
    argv = ["--model", "not-miwae", "--decoder", "linear", "--patience", 7, "--single", "--out", tmp_path / "out"]
    status, _, err = run(capsys, "impute", tmp_path / "people.csv", *argv, *FAST)
    assert status == 0, err
    assert [(i.decoder, i.patience, i.max_epochs) for i in fitted] == [("linear", 7, 15)]
    assert not pd.read_csv(tmp_path / "out" / "people.single.csv").isna().any().any()


def test_impute_passes_min_scale_and_refuses_one_that_is_not_positive(tmp_path, capsys, monkeypatch):
    from mivae.tables.estimators import MIWAEImputer

    fitted = fitted_imputers(monkeypatch, MIWAEImputer)
    frame, _ = mixed_frame()
    frame.to_csv(tmp_path / "people.csv", index=False)
    status, _, err = run(
        capsys, "impute", tmp_path / "people.csv", "--min-scale", 1, "--single", "--out", tmp_path, *FAST
    )
    assert status == 0, err
    assert [i.min_scale for i in fitted] == [1.0]
    # 15 epochs under patience 50 cannot stop early: the epoch limit ends the fit, which is kept, said in a note
    assert "note: training ended at its epoch limit (max_epochs=15)" in err and "more epochs" in err, err
    status, _, err = run(capsys, "impute", tmp_path / "people.csv", "--min-scale", 0, "--out", tmp_path / "no", *FAST)
    assert status == 2 and err == "mivae: error: --min-scale must be a number in (0, inf); got 0.0.\n"
    assert not (tmp_path / "no").exists()


def test_impute_passes_n_models_and_refuses_fewer_than_one(tmp_path, capsys, monkeypatch):
    from mivae.tables.estimators import MIWAEImputer

    fitted = fitted_imputers(monkeypatch, MIWAEImputer)
    frame, _ = mixed_frame()
    frame.to_csv(tmp_path / "people.csv", index=False)
    status, _, err = run(capsys, "impute", tmp_path / "people.csv", "--n-models", 2, "--out", tmp_path, *FAST)
    assert status == 0, err
    assert [(i.n_models, len(i.models_)) for i in fitted] == [(2, 2)]
    assert not pd.read_csv(tmp_path / "people.imputed-10.csv").isna().any().any()  # the tenth: drawn by the second
    status, _, err = run(capsys, "impute", tmp_path / "people.csv", "--n-models", 0, "--out", tmp_path / "no", *FAST)
    assert status == 2 and err == "mivae: error: --n-models must be a whole number of at least 1; got 0.\n", err
    assert not (tmp_path / "no").exists()


def test_impute_says_in_a_note_where_the_model_imputes_the_columns_means(tmp_path, capsys):
    rng = np.random.default_rng(0)
    independent = rng.standard_normal((300, 4))  # columns that do not depend on each other: nothing to learn
    independent[rng.random(independent.shape) < 0.3] = np.nan
    pd.DataFrame(independent, columns=list("abcd")).to_csv(tmp_path / "noise.csv", index=False)
    status, _, err = run(capsys, "impute", tmp_path / "noise.csv", "--model", "vae", "--single", "--out", tmp_path)
    assert status == 0, err
    assert "note: the model imputes nearly the same value in every row, as the columns' means would" in err, err


def test_impute_parquet_in_and_out(tmp_path, capsys):
    frame, _ = mixed_frame()
    frame["colour"] = frame["colour"].astype("category")
    frame[["height", "weight"]] = frame[["height", "weight"]].astype(float)
    frame["age"] = frame["age"].astype("Int64")
    frame["member"] = frame["member"].astype("boolean")
    frame.to_parquet(tmp_path / "people.parquet")
    status, _, err = run(
        capsys, "impute", tmp_path / "people.parquet", "--samples", 2, "--out", tmp_path / "out", *FAST
    )
    assert status == 0, err
    table = pd.read_parquet(tmp_path / "out" / "people.imputed-1.parquet")
    assert list(table.columns) == list(frame.columns)
    assert table["colour"].dtype == "category" and set(table["colour"]) <= {"red", "green", "blue"}
    assert not table.isna().any().any()


def test_impute_reports_and_keeps_an_all_missing_column(tmp_path, capsys):
    frame, _ = mixed_frame()
    frame["nothing"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    status, _, err = run(capsys, "impute", tmp_path / "t.csv", "--samples", 1, "--out", tmp_path / "out", *FAST)
    assert status == 0
    assert "'nothing'" in err and "no observed value" in err
    table = pd.read_csv(tmp_path / "out" / "t.imputed-1.csv")
    assert table["nothing"].isna().all() and not table.drop(columns="nothing").isna().any().any()


def test_classify_cross_validates_over_imputations(tmp_path, capsys):
    data = load_wine(as_frame=True)
    table = data.data.mask(ampute(data.data.to_numpy(), 0.2, seed=0))
    table["kind"] = np.array(["barolo", "grignolino", "barbera"])[data.target]
    table.to_csv(tmp_path / "wine.csv", index=False)
    status, out, err = run(
        capsys, "classify", tmp_path / "wine.csv", "--target", "kind", "--folds", 3, "--imputations", 3, "--epochs", 30
    )
    assert status == 0, err
    assert out.count("fold ") == 3 and out.count("(baseline ") == 3
    accuracy = float(out.split("\naccuracy ")[-1].split()[0])
    baseline = float(out.split("\nbaseline ")[-1].split()[0])
    assert accuracy > 0.8 and baseline > 0.8  # wine has three classes; chance is about 0.4


def test_classify_compares_with_means_and_modes_on_a_mixed_table(tmp_path, capsys):
    frame, _ = mixed_frame(rows=90, seed=1)
    frame["size"] = np.where(frame["weight"].isna(), "unknown", "known")  # a complete text target
    frame.to_csv(tmp_path / "people.csv", index=False)
    baselines = []
    for flags in ([], ["--indicator"]):
        status, out, err = run(
            capsys, "classify", tmp_path / "people.csv", "--target", "size", "--folds", 3, "--samples", 2, *flags, *FAST
        )
        assert status == 0, err
        baselines.append(float(out.split("\nbaseline ")[-1].split()[0]))
    # The target is whether weight is missing: only a baseline given the indicators beats the majority (0.8) by far.
    assert baselines[0] < 0.9 and baselines[1] > 0.95


def _write(path, text):
    path.write_text(text)
    return path


BAD_FILES = {
    "missing": (lambda d: d / "absent.csv", "does not exist"),
    "empty": (lambda d: _write(d / "empty.csv", ""), "is empty"),
    "no rows": (lambda d: _write(d / "header.csv", "a,b,c\n"), "no rows"),
    "binary": (lambda d: (d / "bin.csv").write_bytes(gzip.compress(bytes(range(256)) * 50)) and d / "bin.csv", "not"),
    "ragged": (lambda d: _write(d / "ragged.csv", "a,b\n1,2\n3,4,5,6\n"), "not a readable CSV"),
    "garbage in numbers": (lambda d: _write(d / "g.csv", "a,b\n1,2\n3,x7\n5,6\n7,8\n"), "row 2 holds 'x7'"),
    "not a table suffix": (lambda d: _write(d / "t.xlsx", "a\n1\n"), "neither CSV nor Parquet"),
    "no header": (lambda d: _write(d / "h.csv", "a,a\n1,2\n"), "header"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_one_sentence_and_write_nothing(case, tmp_path, capsys):
    make, expected = BAD_FILES[case]
    path = make(tmp_path)
    status, out, err = run(capsys, "impute", path, "--out", tmp_path / "out", *FAST)
    assert status == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--target", "nope"], "target column 'nope' is not in"),
        (["--target", "c"], "target column 'c' is missing in 1 of 4 rows"),
        (["--target", "a", "--folds", "1"], "--folds must be a whole number of at least 2"),
        (["--target", "a", "--samples", "0"], "--imputations must be a whole number of at least 1"),
    ],
)
def test_classify_refuses_a_bad_target_or_setting(argv, expected, tmp_path, capsys):
    path = _write(tmp_path / "t.csv", "a,b,c\n0,1.5,x\n1,,y\n0,2.5,\n1,3.0,x\n")
    status, _, err = run(capsys, "classify", path, *argv)
    assert status == 2 and expected in err and err.count("\n") == 1


def test_impute_refuses_bad_settings_before_training(tmp_path, capsys):
    path = _write(tmp_path / "t.csv", "a,b\n1,2\n3,\n")
    for argv, expected in [
        (["--samples", "0"], "--imputations must be a whole number of at least 1"),
        (["--samples", "-3"], "--imputations must be a whole number of at least 1"),
        (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
        (["--patience", "0"], "--patience must be a whole number of at least 1"),
        (["--categorical", "a", "--continuous", "a"], "both categorical and continuous"),
        (["--categorical", "zzz"], "column 'zzz' is not in"),
        (["--missingness", "self-masking"], "--missingness is a setting of --model not-miwae, not of --model miwae"),
    ]:
        status, _, err = run(capsys, "impute", path, "--out", tmp_path / "out", *argv)
        assert status == 2 and expected in err, (argv, err)


def test_impute_refuses_an_unwritable_folder(tmp_path, capsys):
    path = _write(tmp_path / "t.csv", "a,b\n1,2\n3,\n")
    blocker = _write(tmp_path / "file", "")
    status, _, err = run(capsys, "impute", path, "--out", blocker / "out")
    assert status == 2 and "cannot write to" in err


def test_read_table_types_and_declarations(tmp_path):
    path = _write(tmp_path / "t.csv", "n,code,word\n1.5,1,a\n,2,b\n2.5,,\n")
    frame = read_table(path)
    assert frame["n"].dtype == np.float64 and frame["code"].dtype == "Int64" and frame["n"].isna().sum() == 1
    declared = read_table(path, categorical=["code"])
    assert declared["code"].dtype == object and declared["code"].tolist()[:2] == [1.0, 2.0]
    with pytest.raises(MivaeError, match="column 'word' .* holds numbers but row 1 holds 'a'"):
        read_table(path, continuous=["word"])


def test_write_table_is_atomic_and_round_trips(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.5], "y": ["a", "b"]})
    for name in ("t.csv", "t.parquet", "t.tsv"):
        write_table(frame, tmp_path / name)
        back = read_table(tmp_path / name)
        assert back["x"].tolist() == [1.0, 2.5] and back["y"].tolist() == ["a", "b"]
    assert not list(tmp_path.glob(".*.part"))

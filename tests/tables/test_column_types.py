"""Every column type a DataFrame or Parquet file can hold: modelled and returned in its own dtype, or refused in one
sentence naming the column (mivae.tables.schema through the estimators and `mivae impute`), for every imputer."""

import decimal

import numpy as np
import pandas as pd
import pytest

from mivae.cli import main
from mivae.errors import InputError
from mivae.tables.estimators import MIWAEImputer, NotMIWAEImputer, VAEImputer

IMPUTERS = (VAEImputer, MIWAEImputer, NotMIWAEImputer)
FAST = dict(max_epochs=5, hidden=(16,), random_state=0)


def typed_frame(rows=120, seed=0):
    """A frame of every modelled type, related through one factor, with gaps in all but two columns."""
    rng = np.random.default_rng(seed)
    size = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "age": pd.array(np.round(50 + 10 * size).astype(int), dtype="Int64"),
            "count": pd.array(rng.integers(0, 5, rows), dtype="UInt8"),
            "target": (size > 0).astype(np.int64),  # complete: never touched
            "height": (1.7 + 0.1 * size).astype(np.float32),
            "member": pd.array(size > 0.3, dtype="boolean"),
            "city": pd.array(np.where(size > 0, "Oslo", "Lund"), dtype="string"),
            "grade": pd.Categorical(np.where(size > 0.5, "high", "low"), categories=["low", "high"], ordered=True),
            "joined": pd.Timestamp("2020-01-01", tz="Europe/Oslo") + pd.to_timedelta(np.round(100 * size), unit="D"),
            "born": pd.Timestamp("1970-01-01") + pd.to_timedelta(np.round(3650 * size), unit="D"),
            "wait": pd.to_timedelta(np.round(60 + 10 * size), unit="min"),
        }
    )
    gaps = rng.random((rows, frame.shape[1])) < 0.2
    gaps[:, 2] = False
    incomplete = frame.copy()
    for j, name in enumerate(frame.columns):
        if gaps[:, j].any():  # assigning even to no row would make the complete int64 column float64
            incomplete.loc[gaps[:, j], name] = None
    return frame, incomplete, pd.DataFrame(gaps, columns=frame.columns)


@pytest.fixture(scope="module", params=IMPUTERS, ids=lambda c: c.__name__)
def typed(request):
    frame, incomplete, gaps = typed_frame()
    imputer = request.param(**FAST).fit(incomplete)
    return frame, incomplete, gaps, imputer, imputer.transform(incomplete), imputer.sample(incomplete, 2)


def test_the_typed_frame_has_its_types_and_gaps(typed):
    frame, incomplete, gaps, *_ = typed
    assert list(incomplete.dtypes) == list(frame.dtypes) and gaps.iloc[:, [0, 1, 3, 7, 8, 9]].any().all()
    assert str(incomplete["joined"].dtype) == "datetime64[us, Europe/Oslo]" and not gaps["target"].any()


def test_every_column_comes_back_in_its_own_dtype_with_every_gap_filled(typed):
    _, incomplete, gaps, imputer, single, copies = typed
    for table in (single, *copies):
        assert list(table.dtypes) == list(incomplete.dtypes)
        assert not table.isna().any().any()
        for name in incomplete.columns:  # observed entries exactly as given
            seen = ~gaps[name]
            pd.testing.assert_series_equal(table.loc[seen, name], incomplete.loc[seen, name], check_names=False)
    assert imputer.schema_.columns[2].integer and (single["target"] == incomplete["target"]).all()


def test_integers_are_imputed_whole_and_within_the_observed_range(typed):
    _, incomplete, gaps, _, single, copies = typed
    for table in (single, *copies):
        for name in ("age", "count"):
            filled = table.loc[gaps[name], name].astype(float)
            observed = incomplete[name].dropna().astype(float)
            assert (filled == np.round(filled)).all()
            assert filled.between(observed.min(), observed.max()).all()


def test_dates_and_durations_are_imputed_as_dates_and_durations_near_the_observed_ones(typed):
    _, incomplete, gaps, _, single, _ = typed
    for name, slack in (("joined", pd.Timedelta(days=400)), ("born", pd.Timedelta(days=15000)), ("wait", None)):
        filled, observed = single.loc[gaps[name], name], incomplete[name].dropna()
        low, high = observed.min(), observed.max()
        slack = slack if slack is not None else (high - low)
        assert filled.between(low - slack, high + slack).all(), name  # not NaT's integer, -9.2e18 ns
    assert single["joined"].dt.tz is not None and str(single["joined"].dt.tz) == "Europe/Oslo"


def test_integers_come_back_as_floats_only_when_asked(typed):
    _, incomplete, gaps, fitted, *_ = typed
    imputer = type(fitted)(round_integers=False, **FAST).fit(incomplete)
    single = imputer.transform(incomplete)
    assert single["age"].dtype == np.float64 and single["height"].dtype == np.float32
    assert (single.loc[gaps["age"], "age"] != np.round(single.loc[gaps["age"], "age"])).any()
    with pytest.raises(InputError, match="round_integers must be True or False; got 'yes'"):
        type(fitted)(round_integers="yes", **FAST).fit(incomplete)


REFUSED = [
    ("lists", [[1, 2], [3], None, [4]], "column 'x' holds \\[1, 2\\], a list"),
    ("dicts", [{"a": 1}, None, {"b": 2}, {"a": 3}], "column 'x' holds \\{'a': 1\\}, a dict"),
    ("bytes", [b"ab", b"cd", None, b"ab"], "column 'x' holds b'ab', a bytes"),
    ("decimals", [decimal.Decimal("1.5"), None, decimal.Decimal("2"), decimal.Decimal("3")], "a Decimal"),
    ("complex", np.array([1 + 2j, 3j, 1, 2]), "column 'x' holds complex numbers"),
    ("huge", [1e308, 5e307, None, -1e300], "column 'x' holds values as large as 1e\\+308, too large to standardise"),
]


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("values", "message"), [(v, m) for _, v, m in REFUSED], ids=[n for n, _, _ in REFUSED])
def test_what_no_model_takes_is_refused_in_one_sentence_naming_the_column(values, message, Imputer):
    frame = pd.DataFrame({"y": [1.0, np.nan, 3.0, 4.0], "x": values})
    with pytest.raises(InputError, match=message) as error:
        Imputer(**FAST).fit(frame)
    assert "\n" not in str(error.value)
    if "standardise" not in message:
        assert "mivae takes numbers, true/false, text, categories, dates" in str(error.value)


def test_a_list_met_only_in_transform_is_refused_naming_the_column(typed):
    _, incomplete, _, imputer, _, _ = typed
    later = incomplete.astype({"city": object})
    later.loc[0, "city"] = ["Oslo", "Lund"]
    with pytest.raises(InputError, match=r"column 'city' holds \['Oslo', 'Lund'\], a list"):
        imputer.transform(later)


@pytest.mark.parametrize("Imputer", IMPUTERS, ids=lambda c: c.__name__)
def test_arrow_lists_structs_and_binaries_from_parquet_are_refused_naming_the_type(Imputer):
    pa = pytest.importorskip("pyarrow")
    for arrow_type, values in (
        (pa.list_(pa.int64()), [[1, 2], None, [3], [4]]),
        (pa.struct([("a", pa.int64())]), [{"a": 1}, None, {"a": 2}, {"a": 3}]),
        (pa.binary(), [b"a", None, b"b", b"c"]),
        (pa.decimal128(5, 2), [decimal.Decimal("1.50"), None, decimal.Decimal("2.00"), decimal.Decimal("3.00")]),
    ):
        frame = pd.DataFrame({"y": [1.0, np.nan, 3.0, 4.0], "x": pd.array(values, dtype=pd.ArrowDtype(arrow_type))})
        with pytest.raises(InputError, match=r"column 'x' is of type .*; mivae takes numbers"):
            Imputer(**FAST).fit(frame)


def test_mivae_impute_keeps_a_parquet_files_types(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    _, incomplete, gaps, *_ = typed_frame(rows=80, seed=1)
    incomplete.to_parquet(tmp_path / "people.parquet")
    status = main(["impute", str(tmp_path / "people.parquet"), "--imputations", "1", "--epochs", "5", "--out",
                   str(tmp_path / "out")])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    [written] = list((tmp_path / "out").iterdir())
    back = pd.read_parquet(written)
    assert list(back.dtypes) == list(pd.read_parquet(tmp_path / "people.parquet").dtypes)
    assert not back.isna().any().any() and (back["target"] == incomplete["target"]).all()
    filled = back.loc[gaps["age"].to_numpy(), "age"]
    assert (filled == filled.round()).all()


def test_a_saved_imputer_keeps_every_columns_type(typed, tmp_path):
    from mivae.tables.estimators import load_imputer

    _, incomplete, _, imputer, single, _ = typed
    imputer.save(tmp_path / "imputer")
    pd.testing.assert_frame_equal(load_imputer(tmp_path / "imputer").transform(incomplete), single)


def test_a_csv_column_of_whole_numbers_with_gaps_is_read_and_imputed_as_integers(tmp_path, capsys):
    from mivae.tables.io import read_table

    path = tmp_path / "people.csv"
    path.write_text("age,score,code\n34,1.5,7\n,2.0,8\n56,,9\n41,3.25,\n-2,1.0,10\n30,2.5,1e3\n")
    frame = read_table(path)
    # age: whole numbers with a gap; score: written with points; code: 1e3 is written as a float
    assert [str(t) for t in frame.dtypes] == ["Int64", "float64", "float64"]
    assert frame["age"].tolist()[:3] == [34, pd.NA, 56] and frame["age"].iloc[4] == -2
    assert read_table(path, categorical=["age"])["age"].dtype == object  # declared labels stay labels
    assert main(["impute", str(path), "--imputations", "1", "--epochs", "3", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    back = pd.read_csv(tmp_path / "out" / "people.imputed-1.csv")
    assert back["age"].dtype == np.int64 and -2 <= back["age"].iloc[1] <= 56

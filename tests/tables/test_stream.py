"""Parquet tables imputed one row group at a time: the same layout out, the in-memory result row for row, a sample
drawn for fitting, and memory that does not grow with the table (checked under a limit set with setrlimit)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_column_types import FAST, typed_frame  # the frame of every column type

from mivae.cli import main
from mivae.errors import MivaeError
from mivae.tables.estimators import MIWAEImputer, NotMIWAEImputer
from mivae.tables.stream import ParquetSource, impute_parquet, sample_rows

SRC = Path(__file__).resolve().parents[2] / "src"


def dataset(folder, frame, files=((0, 70, 25), (70, 120, 30))):
    """Writes `frame` as a Parquet dataset: per (first row, end row, row group size) one file, in partition folders
    as pyarrow, Dask and Spark write them, beside a `_SUCCESS` marker that is not data."""
    for k, (start, end, group) in enumerate(files):
        part = Path(folder) / f"batch={k}" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        frame.iloc[start:end].to_parquet(part, row_group_size=group)
    (Path(folder) / "_SUCCESS").touch()
    return Path(folder)


def layout(folder):
    """{file below the folder: its row group sizes}."""
    files = sorted(p for p in Path(folder).rglob("*.parquet"))
    return {str(f.relative_to(folder)): [pq.read_metadata(f).row_group(g).num_rows for g in range(
        pq.read_metadata(f).num_row_groups)] for f in files}  # fmt: skip


def assert_close(streamed, in_memory, reference):
    """Equal up to float32 rounding (rows are batched differently): 1e-5 of a column's spread, dates included."""
    assert list(streamed.dtypes) == list(in_memory.dtypes)
    for name in streamed.columns:
        a, b = streamed[name], in_memory[name]
        if pd.api.types.is_datetime64_any_dtype(a) or pd.api.types.is_timedelta64_dtype(a):
            assert (a - b).abs().max() <= 1e-5 * reference[name].dropna().std(), name
        else:
            pd.testing.assert_series_equal(a, b, rtol=1e-5)


@pytest.mark.parametrize("Imputer", (MIWAEImputer, NotMIWAEImputer), ids=lambda c: c.__name__)
def test_a_streamed_dataset_keeps_its_layout_and_gets_the_in_memory_single_imputation(Imputer, tmp_path):
    _, incomplete, _ = typed_frame(rows=120, seed=4)
    source = dataset(tmp_path / "in", incomplete)
    whole = pd.concat([pd.read_parquet(f) for f in sorted(source.rglob("*.parquet"))], ignore_index=True)
    imputer = Imputer(**FAST).fit(whole)
    written = impute_parquet(imputer, source, tmp_path / "out", progress=False)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "batch=0/part-0.parquet",
        "batch=1/part-0.parquet",
    ]  # _SUCCESS is not data, and is not copied
    assert (
        layout(tmp_path / "out")
        == layout(source)
        == {
            "batch=0/part-0.parquet": [25, 25, 20],
            "batch=1/part-0.parquet": [30, 20],
        }
    )
    streamed = pd.concat([pd.read_parquet(p) for p in written], ignore_index=True)
    assert not streamed.isna().any().any()
    assert_close(streamed, imputer.transform(whole), whole)


def test_multiple_imputations_draw_every_row_group_anew_and_keep_what_was_observed(tmp_path):
    rng = np.random.default_rng(0)
    block = pd.DataFrame({"a": rng.normal(size=20), "b": rng.normal(size=20)})
    block.loc[::3, "a"] = np.nan
    repeated = pd.concat([block, block], ignore_index=True)  # two row groups holding the same rows
    path = tmp_path / "t.parquet"
    repeated.to_parquet(path, row_group_size=20)
    imputer = MIWAEImputer(**FAST).fit(repeated)
    outs = [tmp_path / "o1.parquet", tmp_path / "o2.parquet"]
    impute_parquet(imputer, path, imputations=outs, seed=7, progress=False)
    first, second = (pd.read_parquet(p) for p in outs)
    gaps = repeated["a"].isna().to_numpy()
    for table in (first, second):
        assert table["b"].equals(repeated["b"]) and (table["a"][~gaps] == repeated["a"][~gaps]).all()
        assert not table.isna().any().any()
        # the same rows in two row groups are drawn with other seeds
        assert not np.allclose(table["a"][:20][gaps[:20]], table["a"][20:][gaps[20:]])
    assert not np.allclose(first["a"][gaps], second["a"][gaps])  # two imputations differ
    again = [tmp_path / "a1.parquet", tmp_path / "a2.parquet"]
    impute_parquet(imputer, path, imputations=again, seed=7, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(again[0]), first)  # seeded: drawn again alike


def test_a_fitting_sample_has_the_stated_size_in_the_source_order_and_counts_the_gaps(tmp_path):
    frame = pd.DataFrame({"i": np.arange(100.0), "j": np.where(np.arange(100) % 4 == 0, np.nan, 1.0)})
    source = ParquetSource(dataset(tmp_path / "in", frame, files=((0, 40, 15), (40, 100, 25))))
    assert source.rows == 100 and source.columns == ["i", "j"]
    sample, missing = sample_rows(source, 30, seed=1)
    assert len(sample) == 30 and sample["i"].is_monotonic_increasing and sample["i"].is_unique
    assert set(sample["i"]) <= set(frame["i"]) and sample["i"].max() >= 40  # drawn from both files
    assert missing == pytest.approx(25 / 200)
    again, _ = sample_rows(source, 30, seed=1)
    pd.testing.assert_frame_equal(again, sample)
    assert not sample_rows(source, 30, seed=2)[0].equals(sample)
    everything, _ = sample_rows(source, None, seed=1)
    pd.testing.assert_frame_equal(everything, frame)
    pd.testing.assert_frame_equal(sample_rows(source, 1000, seed=1)[0], frame)


def test_a_file_with_no_rows_gives_a_file_with_no_rows_and_its_columns(tmp_path):
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [1.0, 2.0, np.nan, 5.0]})
    folder = tmp_path / "in"
    folder.mkdir()
    frame.to_parquet(folder / "full.parquet")
    frame.iloc[:0].to_parquet(folder / "none.parquet")
    imputer = MIWAEImputer(**FAST).fit(frame)
    impute_parquet(imputer, folder, tmp_path / "out", progress=False)
    empty = pd.read_parquet(tmp_path / "out" / "none.parquet")
    assert len(empty) == 0 and list(empty.columns) == ["a", "b"]
    impute_parquet(imputer, folder, tmp_path / "csv", suffix=".csv", progress=False)
    assert (tmp_path / "csv" / "none.csv").read_text().strip() == "a,b"
    assert len(pd.read_csv(tmp_path / "csv" / "full.csv")) == 4


def test_sources_that_cannot_be_streamed_are_refused_in_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MivaeError, match=r"empty is a folder with no Parquet file \(.parquet, .pq\) in it\.$"):
        ParquetSource(tmp_path / "empty")
    with pytest.raises(MivaeError, match=r"nowhere does not exist\.$"):
        ParquetSource(tmp_path / "nowhere")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_parquet(mixed / "1.parquet")
    pd.DataFrame({"a": [1.0], "c": [2.0]}).to_parquet(mixed / "2.parquet")
    with pytest.raises(MivaeError, match=r"2.parquet has columns a, c, but .*1.parquet has a, b: every file of a "):
        ParquetSource(mixed)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MivaeError, match=r"junk.parquet is not a readable Parquet file \(.+\)\.$"):
        ParquetSource(tmp_path / "junk.parquet")
    typo = tmp_path / "typo.parquet"
    pd.DataFrame({"a": ["1.5", "2.5", "x", "4"] * 3}).to_parquet(typo, row_group_size=4)
    source = ParquetSource(typo)
    file, group, first = list(source.row_groups())[2]
    with pytest.raises(MivaeError, match="holds numbers but row 11 holds 'x'"):  # counted in the whole file
        source.table(source.arrow(file, group), file, first)


def test_the_cli_streams_a_parquet_dataset_fitting_on_a_sample(tmp_path, capsys):
    _, incomplete, _ = typed_frame(rows=120, seed=5)
    source = dataset(tmp_path / "in", incomplete)
    code = main(
        ["impute", str(source), "--out", str(tmp_path / "out"), "--imputations", "2", "--single",
         "--fit-rows", "50", "--epochs", "3"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code in (0, None)
    assert "in: 120 rows," in printed and "on 50 of 120 rows" in printed
    for name in ("in.imputed-1", "in.imputed-2", "in.single"):
        assert layout(tmp_path / "out" / name) == layout(source)
        back = pd.read_parquet(tmp_path / "out" / name)
        assert len(back) == 120 and not back.drop(columns="batch").isna().any().any()
    assert main(["impute", str(source), "--out", str(tmp_path / "o"), "--fit-rows", "0"]) == 2
    assert capsys.readouterr().err == "mivae: error: --fit-rows must be a whole number of at least 1; got 0.\n"


# Run in a fresh process: build a dataset of 1.6 million rows (98 MiB as float64), fit on a sample, impute a copy
# of one row group (so that threads and allocator arenas exist), then cap the address space at what the process
# holds now plus HEADROOM and stream the whole dataset under that cap.
HEADROOM = 24 * 2**20
PROBE = textwrap.dedent(
    """
    import json, os, resource, shutil, sys
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from mivae.tables.estimators import VAEImputer
    from mivae.tables.stream import ParquetSource, impute_parquet, sample_rows

    root, headroom = sys.argv[1], int(sys.argv[2])
    rng, columns, group = np.random.default_rng(0), 8, 10_000
    schema = pa.schema([(f"x{j}", pa.float64()) for j in range(columns)])
    os.makedirs(f"{root}/data")
    for f in range(16):
        with pq.ParquetWriter(f"{root}/data/part-{f:02d}.parquet", schema) as writer:
            for _ in range(10):
                x = rng.normal(size=(group, columns))
                x[rng.random(x.shape) < 0.2] = np.nan
                writer.write_table(pa.table({f"x{j}": x[:, j] for j in range(columns)}), row_group_size=group)
    source = ParquetSource(f"{root}/data")
    imputer = VAEImputer(max_epochs=2, hidden=(16,), random_state=0).fit(sample_rows(source, 2000, 0)[0])
    os.makedirs(f"{root}/warm")
    shutil.copy(f"{root}/data/part-00.parquet", f"{root}/warm/")
    impute_parquet(imputer, f"{root}/warm", f"{root}/warm-out", progress=False)
    held = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (held + headroom, resource.RLIM_INFINITY))
    impute_parquet(imputer, source, f"{root}/out", progress=False)
    print(json.dumps({"rows": source.rows, "bytes": source.rows * columns * 8}), flush=True)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the address space from /proc")
def test_a_dataset_several_times_larger_than_the_memory_limit_streams_under_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "ARROW_DEFAULT_MEMORY_POOL": "system", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), str(HEADROOM)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["bytes"] >= 4 * HEADROOM  # the table is several times the memory the stream may add
    out = tmp_path / "out"
    assert layout(out) == layout(tmp_path / "data") and len(layout(out)) == 16
    assert sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet")) == measured["rows"] == 1_600_000
    last = pq.read_table(out / "part-15.parquet")
    assert all(c.null_count == 0 and not pa.compute.any(pa.compute.is_nan(c)).as_py() for c in last.columns)

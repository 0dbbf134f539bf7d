"""Parquet tables larger than memory, read and imputed one row group at a time.

A Parquet file, or a folder of them (a dataset, as pyarrow, Dask and Spark write one), is never read whole:
- `ParquetSource` lists its files and row groups from their footers, and reads one row group as a checked table;
- `sample_rows` draws the rows a fit needs, a seeded sample of a stated size, in one pass;
- `impute_parquet` imputes one row group at a time and writes it as one row group of the same-named file in the
  output, so the output has the input's layout: the same files, the same row groups, the same row order.
Memory holds the model, the fitting sample, and one row group with its imputations, however large the table.

Files are read as they are: a dataset's partition keys written in folder names (`year=2020/`) stay in the
output's folder names and are not columns the model sees. Names starting with "." or "_" (`_SUCCESS`,
`_metadata`) are not data files and are passed over.
"""

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mivae.artifacts import atomic_path
from mivae.errors import MivaeError
from mivae.tables.io import FORMATS, checked_table, separator, table_format

SUFFIXES = tuple(s for s, f in FORMATS.items() if f == "parquet")


class ParquetSource:
    """The data files of a Parquet file or dataset folder, with their row groups, as their footers describe them.

    Every file must have the first one's column names, in the same order. `categorical` and `continuous` are
    `read_table`'s declarations, applied to each row group read.
    """

    def __init__(self, path, categorical=(), continuous=()):
        self.path, self.categorical, self.continuous = Path(path), categorical, continuous
        if self.path.is_dir():
            files = sorted(
                f
                for f in self.path.rglob("*")
                if f.suffix.lower() in SUFFIXES
                and f.is_file()
                and not any(part.startswith((".", "_")) for part in f.relative_to(self.path).parts)
            )
            if not files:
                raise MivaeError(f"{self.path} is a folder with no Parquet file ({', '.join(SUFFIXES)}) in it.")
        elif self.path.is_file():
            files = [self.path]
        else:
            raise MivaeError(f"{self.path} does not exist.")
        self.groups: dict[Path, list[tuple[int, int]]] = {}  # per file: (index in it, its first row in the table)
        first, rows = None, 0
        for f in files:
            meta = _footer(f)
            names = meta.schema.to_arrow_schema().names
            if first is None:
                first = names
            elif names != first:
                raise MivaeError(
                    f"{f} has columns {', '.join(names)}, but {files[0]} has {', '.join(first)}: every file of a "
                    "dataset must have the same columns in the same order."
                )
            self.groups[f] = []
            for g in range(meta.num_row_groups):
                if meta.row_group(g).num_rows:  # pandas writes a frame of no rows as one row group of none
                    self.groups[f].append((g, rows))
                    rows += meta.row_group(g).num_rows
        if rows == 0:
            raise MivaeError(f"{self.path} has no rows.")
        self.columns, self.rows = first, rows

    def row_groups(self):
        """Yields (file, index in the file, first row in the whole table) of every row group, in order."""
        for file, groups in self.groups.items():
            for group, first in groups:
                yield file, group, first

    def relative(self, file):
        """The name of `file` within the source: its path below the folder, or its own name."""
        return Path(file.name) if file == self.path else file.relative_to(self.path)

    def arrow(self, file, group):
        """Returns one row group as an Arrow table."""
        try:
            return pq.ParquetFile(file).read_row_group(group)
        except (OSError, pa.ArrowException) as e:
            raise MivaeError(f"row group {group + 1} of {file} cannot be read ({_reason(e)}).") from None

    def table(self, arrow, file, first_row=0):
        """Returns an Arrow table of this source's as a checked DataFrame (`read_table`'s checks)."""
        return checked_table(arrow.to_pandas(), file, self.categorical, self.continuous, first_row=first_row)


def sample_rows(source, rows, seed):
    """Returns a DataFrame of `rows` rows drawn without replacement from `source` (all of them where `rows` is None
    or not fewer), in their order in the source, and the fraction of the whole source's entries that are missing.

    One pass over the row groups; memory holds the sample and one row group.
    """
    take = None
    if rows is not None and rows < source.rows:
        take = np.sort(np.random.default_rng(seed).choice(source.rows, rows, replace=False))
    parts, missing = [], 0
    for file, group, first in source.row_groups():
        arrow = source.arrow(file, group)
        missing += sum(_missing(column) for column in arrow.columns)
        if take is not None:
            arrow = arrow.take(take[(take >= first) & (take < first + arrow.num_rows)] - first)
        parts.append(arrow)
    try:
        whole = pa.concat_tables(parts, promote_options="default")  # a file's all-empty column may be typed null
    except pa.ArrowException as e:
        raise MivaeError(f"the files of {source.path} do not agree on their columns' types ({_reason(e)}).") from None
    return source.table(whole, source.path), missing / (source.rows * len(source.columns))


def impute_parquet(imputer, source, single=None, imputations=(), seed=None, suffix=None, progress=True):
    """Imputes a Parquet file or dataset with a fitted imputer in one pass, row group by row group; returns the
    paths written.

    `single` (a path, or None) receives the single imputation (`transform`); `imputations` (a list of M paths)
    the M multiple imputations (`sample`). Each output is a file where `source` is a file, a folder of the
    source's files where it is a folder: the files keep their names, with `suffix` (".csv" or ".parquet") where
    given. A Parquet output has one row group per row group read; a CSV output has the rows in the same order.
    A row's single imputation depends on that row alone, so it is what `transform` gives for the whole table in
    memory. The M imputations of each row group are drawn with a seed of their own, made from `seed`, so that no two
    row groups share their random draws.
    """
    source = source if isinstance(source, ParquetSource) else ParquetSource(source)
    targets = ([Path(single)] if single is not None else []) + [Path(p) for p in imputations]
    seeds = iter(np.random.SeedSequence(seed).generate_state(sum(map(len, source.groups.values()))))
    written = []
    from tqdm.auto import tqdm

    with tqdm(total=source.rows, unit="row", desc=source.path.name, disable=None if progress else True) as bar:
        for file, groups in source.groups.items():
            inside = source.relative(file)
            inside = inside.with_suffix(suffix) if suffix else inside
            names = [t / inside if source.path.is_dir() else t for t in targets]
            with contextlib.ExitStack() as stack:
                writers = [_Writer(stack.enter_context(atomic_path(n)), n, file) for n in names]
                for group, first in groups:
                    frame = source.table(source.arrow(file, group), file, first)
                    group_seed = int(next(seeds))
                    done = [imputer.transform(frame)] if single is not None else []
                    done += imputer._sample(frame, len(imputations), group_seed) if imputations else []
                    for writer, table in zip(writers, done):
                        writer.write(table)
                    bar.update(len(frame))
                for writer in writers:
                    writer.close()
            written += names
    return written


class _Writer:
    """Writes each table handed to it after the ones before: as one more row group of a Parquet file, or as more
    lines of a CSV file (by the suffix of `name`, the file's name), into `tmp`, atomic_path's temporary, which
    becomes the file when it is whole. A source file with no rows gives a file with no rows and its columns."""

    def __init__(self, tmp, name, source):
        self.tmp, self.name, self.source, self.writer = tmp, name, source, None
        self.csv = table_format(name) == "csv"
        self.sep = separator(name)

    def write(self, frame):
        if self.csv:
            with open(self.tmp, "a", encoding="utf-8", newline="") as tmp_file:
                frame.to_csv(tmp_file, index=False, header=self.writer is None, sep=self.sep)
            self.writer = True
            return
        table = pa.Table.from_pandas(frame, preserve_index=False)
        try:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        except (ValueError, pa.ArrowException) as e:
            raise MivaeError(f"the imputed rows cannot be written to {self.name} ({_reason(e)}).") from None

    def close(self):
        empty = pq.read_schema(self.source).empty_table()
        if self.writer is None and self.csv:
            self.write(empty.to_pandas())
        elif self.writer is None:
            pq.write_table(empty, self.tmp)
        elif not self.csv:
            self.writer.close()


def _footer(file):
    try:
        return pq.read_metadata(file)
    except (OSError, pa.ArrowException) as e:
        raise MivaeError(f"{file} is not a readable Parquet file ({_reason(e)}).") from None


def _missing(column):
    """The entries of an Arrow column that are missing: nulls, and NaN in a column of floats."""
    nan = pc.sum(pc.is_nan(column)).as_py() or 0 if pa.types.is_floating(column.type) else 0
    return column.null_count + nan


def _reason(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

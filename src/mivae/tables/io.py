"""Table files: CSV and Parquet in, checked, and completed tables out, written atomically.

A file that cannot be a table gets one sentence saying why: missing, not a table, no rows, or a
column of numbers with some entry that is not a number (a typo there would otherwise turn the
whole column into labels).
"""

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from mivae.artifacts import atomic_path
from mivae.errors import MivaeError

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path):
    """Returns "csv" or "parquet" from a path's suffix; raises MivaeError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise MivaeError(f"{path} is neither CSV nor Parquet: mivae reads and writes {', '.join(FORMATS)} files.")
    return FORMATS[suffix]


def separator(path):
    """The field separator of a CSV-like file, by its suffix: a tab for .tsv, else a comma."""
    return "\t" if Path(path).suffix.lower() == ".tsv" else ","


def read_table(path, categorical=(), continuous=()):
    """Returns the table in a CSV or Parquet file as a DataFrame, empty cells as NaN.

    Columns named in `continuous` must hold numbers; an undeclared text column whose entries are
    mostly numbers is taken for a numeric column with a bad entry, and refused with that entry named.
    Columns named in `categorical` are kept as labels whatever they hold.
    """
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise MivaeError(f"{path} does not exist or is not a file.")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=separator(path), skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise MivaeError(f"{path} is empty: a table needs a header line and at least one row.") from None
    except UnicodeDecodeError:
        raise MivaeError(f"{path} is not a text table: it holds bytes that are not UTF-8 text.") from None
    except (pd.errors.ParserError, csv.Error, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MivaeError(f"{path} is not a readable {fmt.upper()} table ({reason}).") from None
    if frame.shape[1] == 0:
        raise MivaeError(f"{path} has no columns.")
    if len(frame) == 0:
        raise MivaeError(f"{path} has a header but no rows.")
    if fmt == "csv":
        frame = _gappy_integers(frame, path, categorical)
    return checked_table(frame, path, categorical, continuous, _csv_header(path) if fmt == "csv" else None)


def _gappy_integers(frame, path, categorical):
    """Returns the frame with every column of whole numbers written without a decimal point but with gaps (which
    pandas reads as floats, NaN having no integer) as nullable integers, Int64, as a Parquet file would give it."""
    floats = [c for c in frame.columns if frame[c].dtype == np.float64 and c not in categorical]
    gappy = [c for c in floats if frame[c].isna().any()]
    if not gappy:
        return frame
    try:
        text = pd.read_csv(path, sep=separator(path), skipinitialspace=True, dtype=str, usecols=gappy)
    except (ValueError, pd.errors.ParserError):  # a name pandas made up for a repeated one: refused just after
        return frame
    for name in gappy:
        written = text[name].dropna().str.strip()
        if len(written) and written.str.fullmatch(r"[+-]?\d{1,15}").all():  # 15 digits: exact as floats
            frame[name] = frame[name].astype("Int64")
    return frame


def checked_table(frame, path, categorical=(), continuous=(), names=None, first_row=0):
    """Returns a table read from `path` (the whole file, or the part of it from row `first_row` on) checked as
    `read_table` describes: every column named once (`names`: as the file writes them, where the reader renamed
    repeats), the declared columns present, text columns of numbers made numbers."""
    names = [str(c) for c in frame.columns] if names is None else names
    if len(set(names)) < len(names) or any(not n.strip() for n in names):
        raise MivaeError(f"{path} needs a header line naming every column once; it has {', '.join(map(repr, names))}.")
    frame.columns = [str(c) for c in frame.columns]
    for name in [*categorical, *continuous]:
        if name not in frame.columns:
            raise MivaeError(f"column {name!r} is not in {path}, whose columns are {', '.join(frame.columns)}.")
    for name in frame.columns:
        if name in categorical:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        elif _text(frame[name].dtype):  # dates, durations, categories and true/false keep their types
            frame[name] = _numbers_or_labels(frame[name], path, name in continuous, first_row)
    return frame


def _text(dtype):
    """Whether a column of this dtype holds text (or objects) that may be numbers written as text."""
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)


def _csv_header(path):
    """Returns the names on a CSV file's first line as written (pandas renames a repeated name)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [n.strip() for n in next(csv.reader(f, delimiter=separator(path)))]


def _numbers_or_labels(column, path, declared_numeric, first_row):
    """Returns a text column as floats when it is numbers, else as it is; refuses numbers with a stray entry."""
    present = column.notna()
    if column[present].map(lambda v: isinstance(v, (bool, np.bool_))).all():
        return column  # true/false with gaps: labels, not 1.0 and 0.0
    numbers = pd.to_numeric(column.where(present), errors="coerce")
    bad = present & numbers.isna()
    if not bad.any():
        return numbers.astype(np.float64)
    if declared_numeric or bad.sum() < present.sum() / 2:
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MivaeError(
            f"column {column.name!r} of {path} holds numbers but row {first_row + row + 1} holds "
            f"{column.iloc[row]!r}; fix that entry, leave it empty for missing, or declare the column "
            "categorical."
        )
    return column


def write_table(frame, path):
    """Writes a DataFrame to a CSV or Parquet file (by suffix) atomically; returns the path."""
    path = Path(path)
    fmt = table_format(path)
    try:
        with atomic_path(path) as tmp:
            if fmt == "parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, index=False, sep=separator(path))
    except OSError as e:
        raise MivaeError(f"cannot write {path}: {e.strerror or e}.") from None
    return path

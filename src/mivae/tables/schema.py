"""Tables with missing values: column types and the encoding a model sees.

A table is a pandas DataFrame or a 2-D array with one row per example; NaN (or None) marks a
missing entry. Each column is *continuous*, standardised by the mean and standard deviation of its
observed entries, or *categorical*, one-hot over the labels seen when the schema was fitted.
Types come from a DataFrame's dtypes (numbers, dates and durations are continuous; bool, object, string
and category columns are categorical) or are declared.

Every column comes back in its own dtype. Integer columns (numpy's or pandas' nullable ones) have their
imputations rounded and kept within the observed range (unless `round_integers` is false: then the column
comes back as floats, as asked); dates, with or without a time zone, and durations are modelled in seconds
and come back as dates and durations. What a table can hold but a model cannot take, such as lists,
structs, bytes, decimals or values too large to standardise, is refused in one sentence naming the column.

The encoding is `values` (n, width) float32, zero where missing, beside `observed` (n, columns)
float32, 1 where observed: missingness travels as that mask, never as a fill value. A column with no
observed entry at fit is *empty*: it takes no part in the model and comes back missing.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

CONTINUOUS, CATEGORICAL = "continuous", "categorical"
MAX_MAGNITUDE = 1e150  # the largest value a continuous column may hold: its square, in the variance, stays finite


@dataclass(frozen=True)
class Column:
    """One column of a fitted schema."""

    name: str
    kind: str  # CONTINUOUS or CATEGORICAL
    mean: float = 0.0  # continuous: mean of the observed entries, in the column's units
    std: float = 1.0  # continuous: their standard deviation (1 where the column is constant)
    categories: tuple = ()  # categorical: the labels seen at fit, in a fixed order
    empty: bool = False  # no observed entry at fit: left out of the model, returned missing
    dtype: object = None  # a DataFrame column's dtype, restored on output where it can hold the result
    time: str = ""  # continuous: "datetime" or "timedelta" for dates and durations (modelled in seconds), else ""
    integer: bool = False  # continuous: whole numbers, imputed rounded within [low, high]
    low: float = 0.0  # continuous: the smallest observed value (in seconds for dates and durations)
    high: float = 0.0  # continuous: the largest

    @property
    def width(self):
        """Returns the number of encoded slots: 1 for a continuous column, one per label for a categorical one."""
        if self.empty:
            return 0
        return 1 if self.kind == CONTINUOUS else len(self.categories)


def is_missing(column):
    """Returns the boolean missing mask (n,) of a 1-D column: NaN, None and pandas' NA are missing."""
    return np.asarray(pd.isna(column), dtype=bool)


def _label_order(label):
    """Sort key that orders mixed labels (numbers and strings) without comparing across types."""
    return (type(label).__name__, label)


def infer_kinds(X, categorical=None):
    """Returns each column's kind for a DataFrame or 2-D array X; `categorical` lists names or indices declared
    categorical.

    Numeric columns are continuous unless declared; bool, object, string and category columns are
    categorical. Raises ValueError for a declared column that is not in X.
    """
    names = column_names(X)
    declared = set()
    for key in categorical or ():
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(names):
            declared.add(int(key))
        elif key in names:
            declared.add(names.index(key))
        else:
            raise ValueError(f"categorical column {key!r} is not in the table, whose columns are {_listing(names)}.")
    dtypes = list(X.dtypes) if hasattr(X, "dtypes") else [np.asarray(X).dtype] * len(names)
    return [CATEGORICAL if j in declared or not _numeric(dtype) else CONTINUOUS for j, dtype in enumerate(dtypes)]


def _numeric(dtype):
    return (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) or _time_of(dtype) != ""
    ) and not pd.api.types.is_complex_dtype(dtype)


def _time_of(dtype):
    """Returns "datetime" or "timedelta" for a dtype of dates or durations, else ""."""
    if dtype is None:
        return ""
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "timedelta"
    return ""


# What a column of a DataFrame or an object array may hold, besides missing entries.
ACCEPTED = (
    "numbers, true/false, text, categories, dates (with or without a time zone) and durations; convert the column "
    "or leave it out"
)


def _arrow_accepted(arrow_type):
    """Whether a pyarrow type is one of numbers, true/false, text, dates with a time or durations."""
    import pyarrow as pa

    kinds = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
             pa.types.is_large_string, pa.types.is_timestamp, pa.types.is_duration)  # fmt: skip
    if pa.types.is_dictionary(arrow_type):
        return _arrow_accepted(arrow_type.value_type)
    return any(accepted(arrow_type) for accepted in kinds)


def check_supported(name, column, dtype):
    """Raises ValueError naming column `name` if its dtype or one of its values is of a kind no model here takes."""
    if dtype is not None and pd.api.types.is_complex_dtype(dtype):
        raise ValueError(f"column {name!r} holds complex numbers; mivae takes {ACCEPTED}.")
    if isinstance(dtype, pd.ArrowDtype) and not _arrow_accepted(dtype.pyarrow_dtype):
        raise ValueError(f"column {name!r} is of type {dtype}; mivae takes {ACCEPTED}.")
    if dtype is None or pd.api.types.is_object_dtype(dtype):
        for value in column:
            if not (_is_label(value) or _is_missing_value(value)):
                raise ValueError(f"column {name!r} holds {value!r}, a {type(value).__name__}; mivae takes {ACCEPTED}.")


def _is_label(value):
    return isinstance(value, (str, bool, np.bool_)) or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.timedelta64)
    )


def _is_missing_value(value):
    return value is None or value is pd.NA or value is pd.NaT or isinstance(value, float) and np.isnan(value)


def column_names(X):
    """Returns the column names of a DataFrame, else the positions 0..d-1 of a 2-D array."""
    if hasattr(X, "columns"):
        return list(X.columns)
    return list(range(np.shape(X)[1]))


def _listing(names, most=8):
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def columns_of(X):
    """Returns the columns of a DataFrame or 2-D array as a list of 1-D numpy arrays."""
    if hasattr(X, "iloc"):
        return [X.iloc[:, j].to_numpy() for j in range(X.shape[1])]
    X = np.asarray(X)
    return [X[:, j] for j in range(X.shape[1])]


def as_float(column, name):
    """Returns a continuous column as float64 (NaN where missing); raises ValueError naming a value that is not a
    number."""
    missing = is_missing(column)
    try:
        out = np.asarray(np.where(missing, np.nan, column), dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v, m in zip(column, missing) if not m and not _is_number(v))
        raise ValueError(
            f"column {name!r} is continuous but holds the value {bad!r}, which is not a number; "
            "declare it categorical or fix the value."
        ) from None
    if np.isinf(out).any():
        raise ValueError(f"column {name!r} holds an infinite value; mivae accepts finite numbers and NaN for missing.")
    return out


def numbers_of(column, name, time=""):
    """Returns a continuous column as float64 numbers, NaN where missing: dates as seconds since 1970-01-01 UTC,
    durations as seconds, anything else by `as_float`."""
    if not time:
        return as_float(column, name)
    if time == "datetime":
        index = pd.DatetimeIndex(column)
        delta = index - (pd.Timestamp(0, tz="UTC") if index.tz is not None else pd.Timestamp(0))
    else:
        delta = pd.TimedeltaIndex(column)
    return np.asarray(delta / pd.Timedelta(1, "s"), dtype=np.float64)


def _times(seconds, c):
    """Returns float seconds as the dates or durations of column `c`, in its dtype (time zone and unit): only a
    DataFrame's column has a `time`, so `c.dtype` is always there."""
    delta = pd.to_timedelta(np.round(seconds * 1e9).astype(np.int64), unit="ns")
    if c.time == "datetime":
        tz = getattr(c.dtype, "tz", None)
        delta = (pd.Timestamp(0, tz="UTC") + delta).tz_convert(tz) if tz is not None else pd.Timestamp(0) + delta
    return pd.Series(delta).astype(c.dtype).to_numpy()


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class Schema:
    """The fitted column types and scalings of a table; encodes tables for a model and decodes its output."""

    def __init__(self, columns, round_integers=True):
        self.columns = tuple(columns)
        self.modelled = [c for c in self.columns if not c.empty]
        self.width = sum(c.width for c in self.modelled)
        self.round_integers = round_integers  # integer columns' imputations rounded within the observed range

    @classmethod
    def fit(cls, X, kinds, round_integers=True, standardize=True):
        """Returns the schema of table X with the given column kinds, scaled on its observed entries (with
        `standardize` False, numbers are modelled on the scale given; dates and durations, in seconds, are scaled).

        Raises ValueError naming a column that holds what no model takes (ACCEPTED) or values too large to
        standardise."""
        dtypes = list(X.dtypes) if hasattr(X, "dtypes") else [None] * len(kinds)
        columns = []
        for name, kind, column, dtype in zip(column_names(X), kinds, columns_of(X), dtypes):
            check_supported(name, column, dtype)
            observed = ~is_missing(column)
            if kind == CONTINUOUS:
                time = _time_of(dtype)
                values = numbers_of(column, name, time)[observed]
                largest = float(np.abs(values).max()) if len(values) else 0.0
                if largest > MAX_MAGNITUDE:
                    raise ValueError(
                        f"column {name!r} holds values as large as {largest:.3g}, too large to standardise (their "
                        f"squares pass the largest float); rescale it, say to other units, to below {MAX_MAGNITUDE:g}."
                    )
                std = float(values.std()) if len(values) else 1.0
                scaled = standardize or bool(time)
                columns.append(
                    Column(
                        name,
                        kind,
                        float(values.mean()) if len(values) and scaled else 0.0,
                        std if std > 1e-12 and scaled else 1.0,
                        empty=not len(values),
                        dtype=dtype,
                        time=time,
                        integer=dtype is not None and pd.api.types.is_integer_dtype(dtype),
                        low=float(values.min()) if len(values) else 0.0,
                        high=float(values.max()) if len(values) else 0.0,
                    )
                )
            else:
                labels = tuple(sorted(set(column[observed].tolist()), key=_label_order))
                columns.append(Column(name, kind, categories=labels, empty=not labels, dtype=dtype))
        return cls(columns, round_integers)

    def layout(self):
        """Returns the modelled columns' (kind, width) pairs, in encoding order."""
        return tuple((c.kind, c.width) for c in self.modelled)

    def encode(self, X):
        """Returns (values (n, width), observed (n, modelled columns)) float32 arrays for table X.

        Continuous values are standardised, categorical ones one-hot; both are 0 where missing.
        Raises ValueError for a categorical label not seen at fit.
        """
        columns = columns_of(X)
        n = len(columns[0]) if columns else 0
        values = np.zeros((n, self.width), dtype=np.float32)
        observed = np.zeros((n, len(self.modelled)), dtype=np.float32)
        slot = 0
        modelled = [(c, col) for c, col in zip(self.columns, columns) if not c.empty]
        for j, (c, column) in enumerate(modelled):
            if not c.time:  # a date column of a DataFrame arrives as Timestamp objects
                check_supported(c.name, column, column.dtype)
            seen = ~is_missing(column)
            observed[:, j] = seen
            if c.kind == CONTINUOUS:
                numbers = numbers_of(column, c.name, c.time)
                values[:, slot] = np.where(seen, (np.nan_to_num(numbers) - c.mean) / c.std, 0.0)
            else:
                index = {label: k for k, label in enumerate(c.categories)}
                unknown = [v for v in column[seen].tolist() if v not in index]
                if unknown:
                    raise ValueError(
                        f"column {c.name!r} holds the label {unknown[0]!r}, which was not seen at fit; "
                        f"known labels are {_listing(list(c.categories))}."
                    )
                rows = np.flatnonzero(seen)
                values[rows, slot + np.array([index[v] for v in column[seen].tolist()], dtype=np.int64)] = 1.0
            slot += c.width
        return values, observed

    def decode(self, values, X):
        """Returns the columns of table X with their missing entries taken from encoded `values` (n, width).

        Observed entries are kept exactly as given; a continuous slot is unstandardised, a
        categorical block is read as its most probable label (argmax). Empty columns stay missing.
        """
        out, slot = [], 0
        for c, column in zip(self.columns, columns_of(X)):
            missing = is_missing(column)
            if c.empty:
                out.append(column.copy())
                continue
            if c.kind == CONTINUOUS:
                filled = values[:, slot].astype(np.float64) * c.std + c.mean
                if c.integer and self.round_integers:
                    filled = np.clip(np.round(filled), c.low, c.high)
                if c.time:
                    kept = pd.Series(column).to_numpy(copy=True)
                    kept[missing] = _times(filled, c)[missing]
                    out.append(kept)
                else:
                    out.append(np.where(missing, filled, as_float(column, c.name)))
            else:
                labels = np.array(c.categories, dtype=object)[values[:, slot : slot + c.width].argmax(1)]
                filled = column.astype(object).copy()
                filled[missing] = labels[missing]
                out.append(filled)
            slot += c.width
        return out

    def assemble(self, columns, like):
        """Returns decoded `columns` as a table shaped like the input `like`: a DataFrame (same index, columns and,
        where they can hold the values, dtypes) or a 2-D array (float64 if every column is numeric, else object)."""
        if hasattr(like, "columns"):
            frame = pd.DataFrame({j: col for j, col in enumerate(columns)}, index=like.index)
            frame.columns = like.columns
            for j, c in enumerate(self.columns):
                if c.dtype is None or c.kind == CONTINUOUS and c.integer and not self.round_integers:
                    continue  # integers imputed as floats, as asked, come back as float64
                if c.kind == CONTINUOUS:
                    frame.isetitem(j, frame.iloc[:, j].astype(c.dtype))
                    continue
                try:
                    frame.isetitem(j, frame.iloc[:, j].astype(c.dtype))
                except (TypeError, ValueError):
                    pass  # a bool column with missing entries was object in the input; it stays object
            return frame
        try:
            return (
                np.column_stack([np.asarray(col, dtype=np.float64) for col in columns]) if columns else np.empty((0, 0))
            )
        except (TypeError, ValueError):
            return np.column_stack([np.asarray(col, dtype=object) for col in columns])

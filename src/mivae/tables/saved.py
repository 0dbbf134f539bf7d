"""Fitted table imputers saved without pickle: the weights as safetensors, everything else as JSON.

    DIR/imputer.json       format version, class, parameters, fitted attributes, training history, schema
    DIR/model.safetensors  the network's weights; its metadata holds the SHA-256 of the architecture that
                           imputer.json describes

Nothing in either file is run: a file can be shipped to workers and loaded from anyone. Loading checks
every field against what it may hold and the tensors' names and shapes (read from the safetensors
header, before any weight is read) against the network the JSON describes, so a damaged, edited or
crafted file is refused in one sentence, never half-loaded. The estimators' `save` and `load` use this
module; here are the pieces that have nothing to do with the estimators themselves: JSON for the values a
table holds (column names, labels, dtypes) and the schema.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from mivae.artifacts import atomic_path
from mivae.errors import InputError, MivaeError
from mivae.readback import checked_state, read_json
from mivae.tables.schema import CATEGORICAL, CONTINUOUS, Column, Schema

FORMAT = 1  # the layout of imputer.json; bumped when it changes, and an unknown one is refused
JSON_NAME, WEIGHTS_NAME = "imputer.json", "model.safetensors"
# The types a column name or a label may have in a saved file, each under its own tag, so that 1, 1.0, True and "1"
# come back as what they were.
_TAGS = {"str": str, "int": int, "float": float, "bool": bool}


def value_to_json(value, what):
    """Returns a column name or label as a tagged JSON value; raises InputError for a type a file cannot hold."""
    if isinstance(value, (bool, np.bool_)):
        return {"bool": bool(value)}
    if isinstance(value, (int, np.integer)):
        return {"int": int(value)}
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return {"float": float(value)}
    if isinstance(value, str):
        return {"str": value}
    raise InputError(
        f"{what} cannot be saved: {value!r} is a {type(value).__name__}, and names and labels must be strings, whole "
        "numbers, finite numbers or true/false."
    )


def value_from_json(data, where):
    """Returns the value of a tagged JSON value; raises InputError naming `where` for anything else."""
    if isinstance(data, dict) and len(data) == 1:
        (tag, value), *_ = data.items()
        kind = _TAGS.get(tag)
        if kind is float and type(value) in (int, float):
            return float(value)
        if kind is not None and type(value) is kind:
            return value
    raise InputError(f"{where} is damaged: {data!r:.60} is not a saved name or label.")


def dtype_to_json(dtype, name):
    """Returns a column's dtype as JSON: None, a category dtype's labels and order, or a dtype's name that reads
    back as the same dtype."""
    if dtype is None:
        return None
    if isinstance(dtype, pd.CategoricalDtype):
        labels = [value_to_json(v, f"a category of column {name!r}") for v in dtype.categories.tolist()]
        return {"categories": labels, "ordered": bool(dtype.ordered)}
    text = str(dtype)
    try:
        same = pd.api.types.pandas_dtype(text) == dtype
    except TypeError:
        same = False
    if not same:
        raise InputError(f"column {name!r} has the dtype {text}, which cannot be saved.")
    return text


def dtype_from_json(data, where):
    """Returns the dtype that `dtype_to_json` wrote; raises InputError naming `where` for anything else."""
    if data is None:
        return None
    if isinstance(data, dict) and set(data) == {"categories", "ordered"} and isinstance(data["categories"], list):
        labels = [value_from_json(v, where) for v in data["categories"]]
        if isinstance(data["ordered"], bool) and len(set(labels)) == len(labels):
            return pd.CategoricalDtype(labels, ordered=data["ordered"])
    if isinstance(data, str):
        try:
            return pd.api.types.pandas_dtype(data)
        except TypeError:
            pass
    raise InputError(f"{where} is damaged: {data!r:.60} is not a saved dtype.")


def schema_to_json(schema):
    """Returns a fitted Schema as JSON values."""
    return [
        {
            "name": value_to_json(c.name, "the column name"),
            "kind": c.kind,
            "mean": c.mean,
            "std": c.std,
            "categories": [value_to_json(v, f"a label of column {c.name!r}") for v in c.categories],
            "empty": c.empty,
            "dtype": dtype_to_json(c.dtype, c.name),
            "time": c.time,
            "integer": c.integer,
            "low": c.low,
            "high": c.high,
        }
        for c in schema.columns
    ]


def schema_from_json(data, where, round_integers):
    """Returns the Schema that `schema_to_json` wrote; raises InputError naming `where` for anything else."""
    fields = {"name", "kind", "mean", "std", "categories", "empty", "dtype", "time", "integer", "low", "high"}
    if not isinstance(data, list) or not data or not all(isinstance(c, dict) and set(c) == fields for c in data):
        raise InputError(f"{where} is damaged: its schema is not a list of columns.")
    columns = []
    for c in data:
        numbers = [c["mean"], c["std"], c["low"], c["high"]]
        if (
            c["kind"] not in (CONTINUOUS, CATEGORICAL)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers)
            or not c["std"] > 0
            or not c["low"] <= c["high"]
            or not isinstance(c["empty"], bool)
            or not isinstance(c["integer"], bool)
            or c["time"] not in ("", "datetime", "timedelta")
            or not isinstance(c["categories"], list)
        ):
            raise InputError(f"{where} is damaged: column {c['name']!r} of its schema is not a valid column.")
        labels = tuple(value_from_json(v, where) for v in c["categories"])
        if c["kind"] == CATEGORICAL and not c["empty"] and (not labels or len(set(labels)) != len(labels)):
            raise InputError(f"{where} is damaged: column {c['name']!r} of its schema lists no distinct labels.")
        columns.append(
            Column(
                value_from_json(c["name"], where),
                c["kind"],
                float(c["mean"]),
                float(c["std"]),
                categories=labels,
                empty=c["empty"],
                dtype=dtype_from_json(c["dtype"], where),
                time=c["time"],
                integer=c["integer"],
                low=float(c["low"]),
                high=float(c["high"]),
            )
        )
    return Schema(columns, round_integers)


def architecture_digest(content):
    """The SHA-256 of what decides the weights' shapes and meaning: the class, the network's settings, the layout."""
    keys = ("class", "architecture", "schema")
    return hashlib.sha256(json.dumps({k: content.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


def write(path, content, model):
    """Writes `content` (JSON values) and `model`'s weights into the folder `path`, each file atomically."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the folder {path}: {e.strerror or e}.") from None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"architecture_sha256": architecture_digest(content)})
    with atomic_path(path / JSON_NAME) as tmp:
        tmp.write_text(json.dumps(content, indent=1) + "\n")


def read(path):
    """Returns the JSON content of a saved imputer's folder, checked only for being a JSON object of this format."""
    path = Path(path)
    file = path / JSON_NAME
    if not path.is_dir():
        raise InputError(f"{path} is not a saved imputer: no such folder.")
    try:
        content = read_json(file, missing=f"{path} is not a saved imputer: {JSON_NAME} is missing.")
    except MivaeError as e:
        raise InputError(str(e)) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else None
        raise InputError(f"{file} is not a saved imputer of format {FORMAT} (its format: {found!r}).")
    return content


def checked_weights(path, content, probe):
    """Returns the saved state dict after checking the file's digest against `content` and every tensor's name,
    shape and type against `probe`, the network `content` describes (on the meta device: no memory), from the
    header before any weight is read; raises InputError for any mismatch."""
    path = Path(path)
    missing = f"{path} is not a complete saved imputer: {WEIGHTS_NAME} is missing."
    return checked_state(
        path / WEIGHTS_NAME, probe, architecture_digest(content), missing, path / JSON_NAME, InputError
    )

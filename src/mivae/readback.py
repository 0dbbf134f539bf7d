"""Reading back what mivae wrote, from files that may have been shared, downloaded, edited or damaged since.

Every JSON file mivae reads back (a run's config, history and metrics, a study's records) is checked here against
the shape it must have before any of it is used, and a safetensors file's header (tensor names, shapes and types)
against the network the JSON describes, built on the meta device, before any tensor is read. What does not fit is
one sentence naming the file and the field: never a traceback, and never an allocation sized by a file's word.

A shape is written as the data it describes:
- a type (`str`, `bool`, `WHOLE`, `NUMBER`, `FINITE`, `ANY`) or a `Check` of one value;
- a list of one shape: a list whose every item has it;
- a dict: an object with exactly those keys (those wrapped in `Optional` may be absent);
- `Map(shape)`: an object of any string keys whose every value has `shape`;
- `Either(a, b, ...)`: any one of them; None: null.
"""

import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mivae.artifacts import weights_read
from mivae.errors import MivaeError

# A JSON file mivae reads back is at most this large: its own files are kilobytes to a few megabytes (a history
# of thousands of epochs, a search's trials); anything larger is refused before it is parsed.
MAX_JSON_BYTES = 64 << 20


@dataclass(frozen=True)
class Check:
    """One value: `test(value)` true, described as `what` ("a whole number of at least 0")."""

    what: str
    test: Callable[[Any], bool]


@dataclass(frozen=True)
class Optional:
    """A key of an object that may be absent."""

    shape: object


@dataclass(frozen=True)
class Map:
    """An object of any string keys, every value of `shape` but those of the keys in `fields`, of their own."""

    shape: object
    fields: dict | None = None


class Either:
    """Any one of `shapes`."""

    def __init__(self, *shapes):
        self.shapes = shapes


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def whole(low=0, high=None):
    """A whole number from `low` (to `high`)."""
    what = f"a whole number of at least {low}" if high is None else f"a whole number from {low} to {high:,}"
    return Check(
        what, lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v and (high is None or v <= high)
    )


WHOLE = whole()
NUMBER = Check("a number", _number)  # NaN and infinities included: Python's JSON writes them
FINITE = Check("a finite number", lambda v: _number(v) and math.isfinite(v))
ANY = Check("any value", lambda v: True)


def _describe(shape):
    if isinstance(shape, Check):
        return shape.what
    if shape is None:
        return "null"
    if isinstance(shape, type):
        return {str: "a string", bool: "true or false"}[shape]
    if isinstance(shape, list):
        return "a list"
    if isinstance(shape, Either):
        return " or ".join(_describe(s) for s in shape.shapes)
    return "an object"


def mismatch(value, shape, at="the file"):
    """Returns where and how `value` differs from `shape` ("model.hidden[0] must be ...; got ..."), or None."""
    if isinstance(shape, Either):
        problems = [mismatch(value, s, at) for s in shape.shapes]
        if None in problems:
            return None
        # an object or a list that only one of the shapes could be: what is wrong inside it
        alike = [p for s, p in zip(shape.shapes, problems, strict=True) if _container(s) is type(value)]
        return alike[0] if len(alike) == 1 else f"{at} must be {_describe(shape)}; got {_short(value)}"
    if isinstance(shape, Check):
        return None if shape.test(value) else f"{at} must be {shape.what}; got {_short(value)}"
    if shape is None or isinstance(shape, type):  # null, str or bool
        return None if (value is None if shape is None else isinstance(value, shape)) else _wrong(value, shape, at)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return _wrong(value, shape, at)
        return next((m for i, v in enumerate(value) if (m := mismatch(v, shape[0], f"{at}[{i}]"))), None)
    if not isinstance(value, dict):
        return _wrong(value, shape, at)
    if isinstance(shape, Map):
        fields = shape.fields or {}
        return next((m for k, v in value.items() if (m := mismatch(v, fields.get(k, shape.shape), _key(at, k)))), None)
    unknown = sorted(set(value) - set(shape))
    if unknown:
        return f"{at} holds the unknown field {unknown[0]!r}; its fields are {', '.join(shape)}"
    for key, inner in shape.items():
        if key not in value:
            if isinstance(inner, Optional):
                continue
            return f"{_key(at, key)} is missing"
        m = mismatch(value[key], inner.shape if isinstance(inner, Optional) else inner, _key(at, key))
        if m:
            return m
    return None


def walk(value, path=()):
    """Every (path, value) inside a JSON value, itself first; a path is the keys and indices leading to it."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from walk(inner, (*path, key))


def _container(shape):
    """dict or list where `shape` is one, else None."""
    return dict if isinstance(shape, (dict, Map)) else list if isinstance(shape, list) else None


def _key(at, key):
    return key if at.startswith("the ") else f"{at}.{key}"  # "the file", "the evaluation": the whole value


def _wrong(value, shape, at):
    return f"{at} must be {_describe(shape)}; got {_short(value)}"


def _short(value):
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(value, shape, path, at="the file"):
    """Returns `value` if it has `shape`; raises MivaeError naming the file `path` and the field (`at` the value
    itself: "identity.preset") otherwise."""
    m = mismatch(value, shape, at)
    if m:
        raise MivaeError(f"{path} is damaged: {m}.")
    return value


def read_json(path, shape=ANY, missing=None):
    """Returns the content of the JSON file `path`, checked against `shape`. A file that is absent is `missing`
    (a sentence) where given; one that cannot be read, is too large, is not JSON or has another shape is one
    sentence naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MivaeError(missing or f"{path} is missing.") from None
    except OSError as e:
        raise MivaeError(f"cannot read {path}: {_reason(e)}.") from None
    if size > MAX_JSON_BYTES:
        raise MivaeError(f"{path} is damaged: it holds {size:,} bytes, more than any file mivae writes there.")
    try:
        content = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MivaeError(f"{path} is damaged and cannot be read ({_reason(e)}).") from None
    return check(content, shape, path)


def _reason(e):
    return getattr(e, "strerror", None) or str(e)[:120] or type(e).__name__


def checked_state(weights, probe, digest, missing, described_by, error=MivaeError):
    """Returns the state dict saved in the safetensors file `weights`, after checking from its header alone, before
    any tensor is read, that its metadata's "architecture_sha256" is `digest` and that its tensors' names and shapes
    are those of `probe`, the network the file `described_by` describes (built on the meta device: no memory); then
    that the tensors read have the network's types. `missing`: the sentence for an absent file. Raises `error`."""
    expected = {k: (tuple(v.shape), v.dtype) for k, v in probe.state_dict().items()}
    with weights_read(weights, missing, error):
        with safe_open(str(weights), framework="pt") as f:
            saved_digest = (f.metadata() or {}).get("architecture_sha256")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
    if saved_digest != digest:
        raise error(f"{weights} was saved for another configuration than {described_by} describes.")
    if shapes != {k: shape for k, (shape, _) in expected.items()}:
        raise error(f"{weights} does not hold the weights of the network that {described_by} describes.")
    with weights_read(weights, missing, error):
        state = load_file(str(weights))
    if any(v.dtype != expected[k][1] for k, v in state.items()):
        raise error(f"{weights} holds tensors of another type than the network's.")
    return state


def on_meta(build):
    """Returns `build()` made on the meta device: a network's shapes without its memory."""
    with torch.device("meta"):
        return build()

"""Random damage to a folder of mivae's files, and the harness that runs mivae on each damaged copy under a memory
limit: the fuzz tests of run directories (test_fuzz.py), study directories (study/test_reproduce.py) and saved
imputers (tables/test_saved.py; the case ["load-imputer", folder, table.parquet] loads one through the API).

A damage is one of: a JSON field dropped, changed to a value of another type or an absurd size, enlarged, or a
field added; a file truncated, swapped with another, or deleted. Each case must end in success or in one sentence
with exit status 2: never a traceback, never a write outside the folder the command writes to, and never more
memory than the bound the harness sets with `resource.setrlimit`.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from mivae.readback import walk

SRC = Path(__file__).resolve().parents[1] / "src"
# What a changed field becomes: every JSON type, and numbers from absurd to out of range.
VALUES = [None, -3, 0, 1, 2_000_000_000, 1e308, -0.5, "x", "", [], {}, True, [1, 2], {"a": 1}, [[0]]]
DAMAGES = ("drop", "change", "enlarge", "add", "truncate", "swap", "delete")


def _set(content, path, value):
    if not path:
        return value
    parent = content
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return content


def _enlarged(value, rng):
    if isinstance(value, bool) or value is None:
        return [value] * 100_000
    if isinstance(value, (int, float)):
        return value * 10 ** int(rng.integers(3, 12))
    if isinstance(value, str):
        return value * 10_000 + "x"
    if isinstance(value, list):
        return (value or [0]) * 10_000
    return {**value, **{f"k{i}": i for i in range(10_000)}}


def damage(folder, rng, json_files, other_files=()):
    """Applies one random damage to `folder`: to one of its `json_files` (relative paths) or, for the file damages,
    to any of those and `other_files`. Returns what was done, in words."""
    kind = DAMAGES[int(rng.integers(len(DAMAGES)))]
    files = list(json_files) + list(other_files)
    name = files[int(rng.integers(len(files)))] if kind in ("truncate", "swap", "delete") else None
    if name is None:
        name = json_files[int(rng.integers(len(json_files)))]
        path = folder / name
        content = json.loads(path.read_text())
        nodes = list(walk(content))
        if kind == "drop" or kind == "add":
            parents = [(p, v) for p, v in nodes if isinstance(v, (dict, list)) and (v or kind == "add")]
            if not parents:
                return f"nothing to {kind} in {name}"
            where, parent = parents[int(rng.integers(len(parents)))]
            if kind == "add":
                grown = {**parent, "unknown_field": 1} if isinstance(parent, dict) else [*parent, 7]
                content = _set(content, where, grown)
            else:
                key = list(parent)[int(rng.integers(len(parent)))] if isinstance(parent, dict) else len(parent) - 1
                del parent[key]
        else:
            where, value = nodes[int(rng.integers(len(nodes)))]
            new = VALUES[int(rng.integers(len(VALUES)))] if kind == "change" else _enlarged(value, rng)
            content = _set(content, where, new)
        path.write_text(json.dumps(content))
        return f"{kind} {name} at {'.'.join(map(str, where)) or 'the top'}"
    path = folder / name
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(rng.integers(len(data) + 1))])
    else:
        other = folder / files[int(rng.integers(len(files)))]
        data, other_data = path.read_bytes(), other.read_bytes()
        path.write_bytes(other_data)
        other.write_bytes(data)
        name = f"{name} and {other.relative_to(folder)}"
    return f"{kind} {name}"


def snapshot(folder, leave_out=()):
    """{relative path: (size, mtime)} of every file under `folder`, but those under the relative paths
    `leave_out` (where the command may write)."""
    out = {}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(relative.is_relative_to(p) for p in leave_out):
            stat = path.stat()
            out[str(relative)] = (stat.st_size, stat.st_mtime_ns)
    return out


# Runs each case's argv through mivae's main in this one process (imports and warm-up paid once), the first case
# on an undamaged folder before the limit is set: the limit is then the address space held plus the bound.
HARNESS = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, traceback
    import torch
    torch.set_num_threads(1)
    from mivae.cli import main

    def call(argv):
        if argv[0] != "load-imputer":
            return main(argv)
        # the API: load a saved imputer and impute a Parquet table with it; MivaeError is its one-sentence refusal
        import pandas as pd
        from mivae.errors import MivaeError
        from mivae.tables.estimators import load_imputer
        try:
            load_imputer(argv[1]).transform(pd.read_parquet(argv[2]))
        except MivaeError as e:
            print(f"mivae: error: {e}", file=sys.stderr)
            return 2
        return 0

    def one(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                return call(argv), err.getvalue()
            except BaseException:
                return "traceback", traceback.format_exc()[-2000:]

    cases, bound = json.load(open(sys.argv[1])), int(sys.argv[2])
    results = [one(cases[0])]
    held = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + bound, resource.RLIM_INFINITY))
    results += [one(argv) for argv in cases[1:]]
    print(json.dumps(results))
    """
)


def run_cases(cases, bound, cwd):
    """Returns [(exit status or "traceback", stderr)] of `cases` (argv lists, the first on an undamaged folder),
    run in one subprocess whose address space may grow by at most `bound` bytes after the first case; `cwd` is its
    working folder."""
    listing = Path(cwd) / "cases.json"
    listing.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(listing), str(bound)], capture_output=True, text=True, env=env, cwd=cwd
    )
    listing.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def failures(results, descriptions):
    """The cases that neither succeeded nor ended in one sentence with exit status 2, with what was done to them."""
    bad = []
    for (status, err), what in zip(results, descriptions, strict=True):
        one_sentence = status == 2 and err.startswith("mivae: error: ") and err.count("\n") == 1
        if not (status == 0 or one_sentence):
            bad.append(f"{what}: {status}: {err[-600:]}")
    return bad


def copy(source, target):
    """A copy of the folder `source` at `target`, for one case to damage."""
    shutil.copytree(source, target)
    return target

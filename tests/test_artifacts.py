import pytest

from mivae.artifacts import atomic_path


def test_atomic_path_replaces_the_file_only_on_success(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"  # the old file survives
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary left behind


def test_a_written_file_gets_the_usual_permissions_not_the_temporary_files(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


def test_every_file_mivae_writes_goes_through_an_atomic_temporary():
    """A write call anywhere in the package writes the temporary of `atomic_path`, never the final path."""
    import ast
    from pathlib import Path

    # the written path of each write call: the object of path.write_text(...), or the argument at this position
    target = {
        "write_text": "self",
        "write_bytes": "self",
        "savefig": 0,
        "to_csv": 0,
        "to_parquet": 0,
        "save_file": 1,
        "save": 0,
        "savez": 0,
        "open": 0,
    }
    source = Path(__file__).resolve().parents[1] / "src" / "mivae"
    found = 0
    for path in source.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name not in target or name == "save" and ast.get_source_segment(text, node.func) != "np.save":
                continue
            if name == "open":  # only opened for writing: a mode of w or a
                modes = [a for a in node.args[1:2] if isinstance(a, ast.Constant)] + [
                    k.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)
                ]
                if not any(m.value[0] in "wa" for m in modes):
                    continue
            written = node.func.value if target[name] == "self" else node.args[target[name]]
            found += 1
            where = f"{path.relative_to(source)}:{node.lineno}"
            assert "tmp" in ast.get_source_segment(text, written), f"{where} writes without atomic_path"
    assert found >= 8  # models, JSON, reports, figures, tables, downloads


def test_a_temporary_names_its_host_and_process_and_only_a_dead_local_writers_are_removed(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from mivae.artifacts import remove_stale_temporaries

    with atomic_path(tmp_path / "table.csv") as tmp:
        host = socket.gethostname().replace(".", "_")
        assert tmp.name.startswith(f".table.csv.{host}-{os.getpid()}-") and tmp.name.endswith(".part")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    (tmp_path / "units" / "a").mkdir(parents=True)
    files = {
        "stale": tmp_path / "units" / "a" / f".model.safetensors.{host}-{dead}-x1y2.part",
        "live": tmp_path / f".results.json.{host}-{os.getpid()}-abc.part",
        "elsewhere": tmp_path / f".results.json.another-host-{dead}-abc.part",
        "untagged": tmp_path / ".results.json.k3j2.part",
        "ordinary": tmp_path / "notes.part",
    }
    for path in files.values():
        path.write_text("half")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [name for name, path in files.items() if not path.exists()] == ["stale"]
    assert (tmp_path / "table.csv").exists()

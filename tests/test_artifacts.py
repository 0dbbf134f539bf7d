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
    assert target.read_text() == "first"                  # the old file survives
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

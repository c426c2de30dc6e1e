"""Atomic writes leave either the old or the new content, with the usual permissions."""

import os
import stat

import pytest

from top.storage.io import atomic_directory, atomic_write_json, atomic_write_text, recover_directory


def test_atomic_write_text_replaces_whole_and_uses_umask(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"k": [1, 2]})
    assert (tmp_path / "a.json").read_text().startswith("{")


def test_atomic_directory_keeps_old_copy_when_the_block_fails(tmp_path):
    target = tmp_path / "last"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_interrupted_swap_is_recovered(tmp_path):
    target = tmp_path / "last"
    old = tmp_path / ".last.old"
    old.mkdir()
    (old / "weights").write_text("v1")
    # A kill between the two renames leaves only the moved-aside copy.
    recover_directory(target)
    assert (target / "weights").read_text() == "v1" and not old.exists()
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"

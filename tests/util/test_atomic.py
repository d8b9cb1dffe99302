"""reelpack.util.atomic: the shared temp-file + fsync + rename writer."""

import os
import stat

import pytest

from reelpack.util.atomic import atomic_path, atomic_write_bytes


def test_atomic_path_replaces_whole_file_with_mode(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"old")
    with atomic_path(target, mode=0o644) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new contents")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]

"""Atomic writes: all or nothing, and ordinary file permissions."""
import os
import stat

import pytest
import torch

from vimamba.io import atomic_torch_save, atomic_write


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_new_files_follow_the_umask_and_replacements_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_torch_save({"x": torch.ones(2)}, tmp_path / "ckpt.pth")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's private 0600
        os.chmod(path, 0o604)
        atomic_torch_save({"x": torch.zeros(2)}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
        assert torch.equal(torch.load(path)["x"], torch.zeros(2))
    finally:
        os.umask(old)

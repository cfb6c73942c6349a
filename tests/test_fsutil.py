"""edgeft/fsutil.py: files appear whole or not at all."""

from __future__ import annotations

import pytest

def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    from edgeft.fsutil import atomic_file

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]

"""One atomic writer for every file: old content survives a failed write, modes follow the umask."""
import os
import stat

import numpy as np
import pytest

from smaformer.errors import InputError
from smaformer.io_utils import atomic_path, check_readable, file_sha256, write_text


def test_write_text_is_utf8_and_world_readable(tmp_path):
    p = write_text(tmp_path / "sub" / "a.txt", "mm² ✓")
    assert p.read_bytes() == "mm² ✓".encode()
    old = os.umask(0o022)
    try:
        write_text(p, "again")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644     # mkstemp alone gives 0600
    assert [q.name for q in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = write_text(tmp_path / "m.json", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["m.json"]


def test_temp_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "seg.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
    with atomic_path(tmp_path / "p.npz") as tmp:
        np.savez_compressed(tmp, a=np.arange(3))       # numpy would append .npz to other names
    assert np.load(tmp_path / "p.npz")["a"].tolist() == [0, 1, 2]


def test_check_readable_names_the_fault(tmp_path):
    with pytest.raises(InputError, match="nope.pt: file not found"):
        check_readable(tmp_path / "nope.pt")
    (tmp_path / "z.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"z.pt: empty file \(0 bytes\)"):
        check_readable(tmp_path / "z.pt")
    with pytest.raises(InputError, match="is a folder"):
        check_readable(tmp_path)
    (tmp_path / "ok").write_bytes(b"abc")
    assert file_sha256(tmp_path / "ok") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

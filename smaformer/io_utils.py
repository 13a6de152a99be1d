"""Writing files safely, once for the whole project.

Every file the toolkit writes (checkpoints, metrics, CSV, HTML, NIfTI/PNG/TIFF labels, probabilities,
converted data) goes through ``atomic_path``: the writer fills a temp file next to the target, which is
flushed to disk and only then moved into place with ``os.replace``. A crash or Ctrl-C never leaves a
half-written file, and an existing file is either the old one or the new one. The temp file keeps the
target's suffix, so writers that pick the format from the name (nibabel, Pillow, numpy) work unchanged,
and the result gets the usual ``0666 & ~umask`` mode instead of ``mkstemp``'s 0600.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from smaformer.errors import InputError


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()   # read once: setting it to read it is not thread-safe


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; when the block ends without error it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + _suffix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary_file)`` on a temp file next to ``path``, then move it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text, whatever the locale."""
    return write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_readable(path: str | Path, what: str = "file", error: type[InputError] = InputError) -> Path:
    """``path`` as a Path when it is a non-empty file; otherwise ``error`` naming it and the fault."""
    path = Path(path)
    if not path.exists():
        raise error(path, f"{what} not found")
    if not path.is_file():
        raise error(path, f"{what} is a folder, not a file")
    if path.stat().st_size == 0:
        raise error(path, f"empty {what} (0 bytes)")
    return path

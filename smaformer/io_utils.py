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
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from smaformer.errors import InputError, first_line


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + _suffix(path), dir=path.parent)
    except OSError as e:
        raise InputError(path, f"cannot write here ({first_line(e)})") from None
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


# the temp names atomic_path makes: ".<name>.<8 random chars>.tmp<suffix>"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
STALE_TEMP_S = 600.0


def clean_stale_temps(folder: str | Path, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove the hidden temp files a killed writer left in ``folder``. Only those older than
    ``older_than_s``: a younger one may belong to another process still writing there (a parallel part)."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    cutoff = time.time() - older_than_s
    for p in folder.iterdir():
        if _TEMP_NAME.match(p.name) and p.is_file() and p.stat().st_mtime < cutoff:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output(path: str | Path, *, folder: bool = False, inputs: Iterable[str | Path] = (),
                 what: str = "output") -> Path:
    """Refuse, before any work starts, an output that is one of ``inputs`` or lies inside an input folder
    (symlinks and relative paths resolved), that is a folder where a file is wanted or the reverse, or
    whose folder cannot be created and written. Returns ``path`` as a Path; creates nothing."""
    path = Path(path)
    real = path.resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if real == src or (src.is_dir() and src in real.parents):
            where = "is" if real == src else "is inside"
            raise InputError(path, f"{what} {where} the input {inp}; inputs are never written, choose another "
                                   f"{'folder' if folder else 'file'}")
    if path.exists() and path.is_dir() != folder:
        raise InputError(path, f"{what} is a {'file' if folder else 'folder'}; give a "
                               f"{'folder' if folder else 'file name'}")
    base = real if folder else real.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise InputError(path, f"cannot create the {what}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".smaformer-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(path, f"cannot write in {base} ({first_line(e)})") from None
    return path


@contextlib.contextmanager
def atomic_files(*paths: str | Path) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``paths[0]`` for a writer that makes several files at once, named as
    ``paths`` are (an OpenVINO IR writes ``model.xml`` with its ``model.bin``). When the block ends without
    error each is flushed and moved into place in the order given (the file that names the others last);
    the folder is removed either way."""
    paths = [Path(p) for p in paths]
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}.", suffix=".tmp", dir=paths[0].parent))
    except OSError as e:
        raise InputError(paths[0], f"cannot write here ({first_line(e)})") from None
    try:
        yield folder
        for path in paths:
            with open(folder / path.name, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(folder / path.name, 0o666 & ~_UMASK)
            os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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

"""npz/h5 array files (the Synapse and ACDC layouts store slices and volumes so), read with clear faults."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from smaformer.errors import InputError, first_line
from smaformer.io_utils import check_readable

H5_SUFFIXES = (".h5",)


def read_arrays(path: str | Path, keys: tuple[str, ...] = ("image", "label"),
                optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read ``keys`` from an ``.npz`` or ``.h5`` file; a missing required key is an InputError."""
    path = check_readable(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                have = list(f.files)
                out = {k: np.asarray(f[k]) for k in keys + optional if k in have}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                out = {k: f[k][()] for k in keys + optional if k in f}
                have = list(f.keys()) if len(out) < len(keys) else list(out)
    except Exception as e:  # zipfile.BadZipFile, OSError from h5py, ValueError for pickled arrays
        raise InputError(path, f"cannot read {path.suffix} file, truncated or not {path.suffix}? "
                               f"({first_line(e)})") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise InputError(path, f"missing key {missing[0]!r} (has: {', '.join(have) or 'nothing'})")
    return out


def array_shape(path: str | Path, key: str = "image") -> tuple[int, ...]:
    """Shape of one array in an h5 file without reading it (npz: reads the array)."""
    path = Path(path)
    if path.suffix == ".npz":
        return read_arrays(path, (key,))[key].shape
    if not path.is_file() or path.stat().st_size == 0:
        return read_arrays(path, (key,))[key].shape  # raises the right fault
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise InputError(path, f"missing key {key!r} (has: {', '.join(f.keys()) or 'nothing'})")
            return tuple(f[key].shape)
    except OSError as e:
        raise InputError(path, f"cannot read .h5 file, truncated or not HDF5? ({first_line(e)})") from None


def spacing_affine(spacing) -> np.ndarray:
    """The axis-aligned affine of a (D,H,W) array with this spacing: array axes are the file axes reversed."""
    return np.diag([*map(float, reversed(tuple(spacing))), 1.0])


def read_h5_volume(path: Path, dtype) -> tuple[np.ndarray, dict]:
    """``read_image`` for a Synapse/ACDC ``.h5`` volume: its ``image`` (D,H,W). Such files hold no orientation,
    so the props get ``spacing_affine`` of their ``spacing`` (1 mm where absent) and labels go out as NIfTI."""
    arr = read_arrays(path, ("image",), optional=("spacing",))
    data = arr["image"]
    if data.ndim != 3:
        raise InputError(path, f"expected a (D,H,W) volume under 'image', got shape {data.shape}")
    spacing = tuple(float(s) for s in arr["spacing"]) if "spacing" in arr else (1.0, 1.0, 1.0)
    props = {"format": "h5", "path": str(path), "is_volume": True, "spacing": spacing,
             "affine": spacing_affine(spacing), "header": None, "transpose": (2, 1, 0),
             "file_shape": tuple(reversed(data.shape))}
    return (data if dtype is None else data.astype(dtype)), props

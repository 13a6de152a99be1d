"""Medical image IO that keeps geometry (the nnU-Net reader/writer idea: read -> (array, props); the
writer restores what props recorded).

- NIfTI (``.nii``, ``.nii.gz``): the array is (D,H,W) = the file's axes reversed, SimpleITK's (z, y, x)
  as in the official preprocessing, so slices run along the file's third axis (no reorientation).
  ``props`` keeps the affine, the header and the axis permutation, so
  ``write_labels`` writes a uint8 NIfTI with exactly the input's shape, affine and header.
- DICOM series folders (SimpleITK/GDCM): slices sorted by position; spacing, origin and direction kept;
  labels are written as NIfTI with the equivalent RAS affine.
- PNG/JPG/BMP/GIF/TIFF: 2D images as (C,H,W); a TIFF stack that is not colour is a (D,H,W) volume.

``props["spacing"]`` is in mm, one entry per spatial array axis. Every fault raises a one-line
:class:`~smaformer.errors.InputError` naming the file.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from smaformer.data.arrays import H5_SUFFIXES, read_h5_volume
from smaformer.errors import InputError, first_line
from smaformer.io_utils import atomic_path, check_readable

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
# file axes -> array axes: (k, j, i) = SimpleITK's (z, y, x), as the official Synapse/ACDC/nnU-Net code reads
SITK_ORDER = (2, 1, 0)
LABEL_INTENT = 1002  # NIFTI_INTENT_LABEL
COMMENT_ECODE = 6  # NIfTI extension code for a comment; holds {"labels": {...}} as JSON


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_file(path: Path) -> None:
    """A non-empty file, or a folder (a DICOM series)."""
    if not path.is_dir():
        check_readable(path)


def _load_nifti(path: Path):
    _check_file(path)
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises many types for non-NIfTI or truncated headers
        raise InputError(path, f"not a readable NIfTI file ({first_line(e)})") from None


def nifti_header_props(path: str | Path) -> dict[str, Any]:
    """Shape (array order) and spacing of a NIfTI file from its header only (no voxel data read)."""
    path = Path(path)
    img = _load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (2, 3, 4):
        raise InputError(path, f"expected a 3D image, got {len(shape)} dimensions {shape}")
    shape3 = (shape + (1,))[:3] if len(shape) == 2 else shape[:3]
    perm = SITK_ORDER
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [1.0] * (3 - len(shape[:3]))
    return {"shape": tuple(shape3[p] for p in perm), "spacing": tuple(zooms[p] for p in perm),
            "frames": shape[3] if len(shape) == 4 else None}


def _read_nifti(path: Path, frame: int | None, dtype) -> tuple[np.ndarray, dict]:
    img = _load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4:
        if shape[3] == 1:
            frame = 0
        elif frame is None:
            raise InputError(path, f"4D NIfTI with {shape[3]} frames; choose one with frame=N "
                                   f"(0..{shape[3] - 1}, --frame on the command line)")
        if not 0 <= frame < shape[3]:
            raise InputError(path, f"frame {frame} out of range 0..{shape[3] - 1}")
    elif len(shape) not in (2, 3):
        raise InputError(path, f"expected a 3D image, got {len(shape)} dimensions {shape}")
    try:
        data = img.dataobj[..., frame] if len(shape) == 4 else img.dataobj[...]
        data = np.asarray(data, dtype=dtype)
    except Exception as e:  # truncated gzip streams, short files
        raise InputError(path, f"cannot read voxel data, file truncated? ({first_line(e)})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    perm = SITK_ORDER
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [1.0] * (3 - min(len(shape), 3))
    props = {"format": "nifti", "path": str(path), "is_volume": True, "affine": img.affine.copy(),
             "header": img.header.copy(), "nifti_class": type(img).__name__, "transpose": perm,
             "file_shape": shape[:3], "spacing": tuple(zooms[p] for p in perm), "frame": frame}
    return np.ascontiguousarray(data.transpose(perm)), props


def _sitk():
    """SimpleITK, with its raw C++ warnings off for the process: our own lines name the file and the fault
    (``_check_series_slices``); GDCM's stderr would repeat them without the file."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise InputError(None, "DICOM input needs SimpleITK: pip install 'smaformer[dicom]'") from None
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


def _read_dicom_series(folder: Path, dtype=np.float32) -> tuple[np.ndarray, dict]:
    sitk = _sitk()
    if not any(folder.iterdir()):
        raise InputError(folder, "empty folder")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(folder, "no DICOM series found (and no NIfTI/PNG/TIFF file given)")
    series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids}
    sid = max(series, key=lambda s: len(series[s]))
    files = list(series[sid])
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest (%s, %d slices)", folder, len(series), sid,
                    len(files))
    uneven = _check_series_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise InputError(folder, f"cannot read DICOM series ({first_line(e)})") from None
    if img.GetDimension() != 3:
        raise InputError(folder, f"expected a 3D DICOM series, got {img.GetDimension()} dimensions")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(folder, "colour DICOM series are not supported")
    data = sitk.GetArrayFromImage(img)  # (z, y, x)
    data = data if dtype is None else data.astype(dtype)
    spacing, origin = np.array(img.GetSpacing()), np.array(img.GetOrigin())
    direction = np.array(img.GetDirection()).reshape(3, 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    props = {"format": "dicom", "path": str(folder), "is_volume": True, "affine": affine, "header": None,
             "nifti_class": "Nifti1Image", "transpose": SITK_ORDER, "file_shape": data.shape[::-1],
             "spacing": tuple(float(s) for s in spacing[::-1]), "origin": tuple(origin),
             "direction": tuple(direction.ravel()), "series_uid": sid, "files": len(files),
             "dicom_files": files, "n_series": len(series)}   # files in slice order (a DICOM SEG references them)
    if uneven:
        props["warnings"] = [uneven]
    return data, props


def _check_series_slices(folder: Path, files: list[str]) -> str | None:
    """Name a faulty slice before the series reader hides which one it was, in one line: a file that cannot
    be read, a slice without a position, one of another orientation (a localizer), a duplicated position, or
    a gap (a missing slice; GDCM leaves unreadable files out of the series). Returns a warning when the
    slice steps are uneven: the volume gets their mean step, and the worst slice lies this far off its place
    (a DICOM SEG references the real slices and is exact)."""
    sitk = _sitk()
    pos, orient = [], []
    for f in files:
        _check_file(Path(f))
        probe = sitk.ImageFileReader()
        probe.SetFileName(f)
        try:
            probe.ReadImageInformation()
        except RuntimeError as e:
            raise InputError(f, f"broken DICOM slice in series {folder.name} ({first_line(e)})") from None
        frames = probe.GetMetaData("0028|0008").strip() if probe.HasMetaDataKey("0028|0008") else "1"
        if frames.isdigit() and int(frames) > 1:
            raise InputError(f, f"an enhanced multi-frame DICOM ({frames} frames in one file) is not read here; "
                                "convert it to NIfTI (e.g. dcm2niix) or to one file per slice")
        if len(files) > 1 and not probe.HasMetaDataKey("0020|0032"):
            raise InputError(f, "no ImagePositionPatient (0020,0032): the slice cannot be placed in the series")
        pos.append(np.array(probe.GetOrigin()))
        orient.append(np.round(np.array(probe.GetDirection(), float)[:6], 4))
    if len(pos) < 2:
        return None
    common = max(({tuple(o) for o in orient}), key=lambda o: sum(tuple(x) == o for x in orient))
    for f, o in zip(files, orient, strict=True):
        if tuple(o) != common:
            raise InputError(f, f"another orientation ({', '.join(f'{v:g}' for v in o)}) than the series' "
                                f"({', '.join(f'{v:g}' for v in common)}): a localizer or another stack; move it out")
    steps = np.linalg.norm(np.diff(np.stack(pos), axis=0), axis=1)
    if (steps < 1e-3).any():
        i = int(np.argmax(steps < 1e-3))
        raise InputError(files[i + 1], f"same position as {Path(files[i]).name}: a duplicated slice in series "
                                       f"{folder.name}")
    if len(pos) < 3:
        return None
    med = float(np.median(steps))
    if med > 0 and steps.max() > 1.5 * med:
        members = {Path(f).name for f in files}
        for other in sorted(folder.iterdir()):
            if other.is_file() and other.name not in members and not other.name.startswith("."):
                probe = sitk.ImageFileReader()
                probe.SetFileName(str(other))
                try:
                    probe.ReadImageInformation()
                except RuntimeError:
                    raise InputError(other, f"broken DICOM slice: unreadable, so series {folder.name} has a gap "
                                            "where it belongs") from None
        i = int(steps.argmax())
        raise InputError(files[i + 1], f"gap of {steps[i]:.2f} mm before this slice (usual step {med:.2f} mm): "
                                       "a slice of the series is missing")
    along = np.concatenate([[0.0], np.cumsum(steps)])
    off = np.abs(along - np.arange(len(along)) * along[-1] / (len(along) - 1))
    if off.max() > max(0.01, 0.01 * med):
        i = int(off.argmax())
        return (f"{folder.name}: uneven slice steps ({steps.min():.2f} to {steps.max():.2f} mm); the volume uses "
                f"their mean {along[-1] / (len(along) - 1):.3f} mm, so {Path(files[i]).name} lies {off[i]:.2f} mm "
                "off its place in NIfTI output (a DICOM SEG references the real slices)")
    return None


def _read_2d(path: Path, dtype) -> tuple[np.ndarray, dict]:
    _check_file(path)
    try:
        data = None
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            try:
                data = np.asarray(tifffile.imread(str(path)))
            except ValueError:  # e.g. LZW without the optional imagecodecs package: Pillow decodes it
                data = None
        if data is None:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    if np.ptp(np.asarray(im)[..., :3], axis=-1).max() == 0:
                        im = im.convert("L")
                if im.mode in ("LA", "La"):     # grey + alpha is one grey image, not a 2-slice stack
                    im = im.getchannel(0)
                data = np.asarray(im)
    except Exception as e:
        raise InputError(path, f"not a readable image ({first_line(e)})") from None
    is_volume = False
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., :3].transpose(2, 0, 1)
    elif data.ndim == 3:
        is_volume = True  # a TIFF stack
    else:
        raise InputError(path, f"expected a 2D image or a 3D stack, got shape {data.shape}")
    spacing = (1.0, 1.0, 1.0) if is_volume else (1.0, 1.0)
    props = {"format": path.suffix.lower().lstrip("."), "path": str(path), "is_volume": is_volume,
             "affine": None, "spacing": spacing, "file_shape": data.shape, "dtype": str(data.dtype)}
    return np.ascontiguousarray(data, dtype=dtype), props


def read_image(path: str | Path, frame: int | None = None, allow_nonfinite: bool = False,
               scale_8bit: bool = False, dtype=np.float32) -> tuple[np.ndarray, dict]:
    """Read a NIfTI file, a DICOM series folder or a 2D image; returns ``(array, props)``, the array float32
    unless ``dtype`` says otherwise (``None`` keeps the stored type, e.g. for label maps).

    Volumes are (D,H,W); 2D images (C,H,W) with ``props["is_volume"] = False``. ``frame`` picks a time
    point of a 4D NIfTI. NaN/inf voxels are a fault unless ``allow_nonfinite``. ``scale_8bit`` divides
    8-bit 2D images by 255 (the dataset readers leave that to the intensity spec instead).
    """
    path = Path(path)
    if path.is_dir():
        data, props = _read_dicom_series(path, dtype)
    elif is_nifti(path):
        data, props = _read_nifti(path, frame, dtype)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        data, props = _read_2d(path, dtype)
    elif path.suffix.lower() in H5_SUFFIXES:
        data, props = read_h5_volume(path, dtype)
    elif path.suffix.lower() in (".dcm", "") and path.is_file():
        _check_file(path)
        data, props = _read_dicom_series(path.parent, dtype)
    else:
        _check_file(path)
        raise InputError(path, "unsupported file type; use NIfTI (.nii/.nii.gz), a DICOM folder, an .h5 volume "
                               f"or {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}")
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError(path, f"image has {int((~np.isfinite(data)).sum())} NaN/inf values")
    if scale_8bit and props.get("dtype") == "uint8":
        data = data / np.float32(255.0)
    return data, props


def label_names_json(classes: list[str] | None) -> str:
    return json.dumps({"labels": {str(i): n for i, n in enumerate(classes or [])}})


def read_label_names(path: str | Path) -> list[str] | None:
    """The class names ``write_labels`` stored in a NIfTI header extension, or None."""
    img = _load_nifti(Path(path))
    for ext in img.header.extensions:
        if ext.get_code() == COMMENT_ECODE:
            try:
                labels = json.loads(ext.get_content().rstrip(b"\0").decode())["labels"]
            except (ValueError, KeyError, UnicodeDecodeError):
                continue
            return [labels[str(i)] for i in range(len(labels))]
    return None


def write_labels(path: str | Path, labels: np.ndarray, props: dict, classes: list[str] | None = None,
                 check: Callable[[Path], None] | None = None) -> Path:
    """Write a label map with the geometry ``read_image`` recorded; returns the written path.

    Volumes go to NIfTI (the input's shape, affine and header for NIfTI input; the equivalent RAS affine
    for DICOM), dtype uint8, intent "label", class names in the description and in a JSON header
    extension. 2D labels go to PNG (or TIFF) as raw class ids. Every write is atomic; ``check(temp_path)``,
    when given, vets a written NIfTI before it replaces ``path`` (raise to keep the old file).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(path, f"label values {labels.min()}..{labels.max()} do not fit uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not props.get("is_volume", True):
        return _write_2d(path, labels, props)
    if "transpose" not in props:  # a TIFF stack: labels go back into a stack of the same shape
        if tuple(labels.shape) != tuple(props["file_shape"]):
            raise InputError(path, f"label shape {labels.shape} does not match the input stack {props['file_shape']}")
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(path, "labels of a TIFF stack are written as a TIFF stack; name the output .tif")
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(str(tmp), labels.astype(np.uint8))
        return path
    if not is_nifti(path):
        raise InputError(path, "volume labels are written as NIfTI; name the output .nii.gz")
    perm = props["transpose"]
    file_shape = tuple(props["file_shape"])
    data = labels.astype(np.uint8).transpose(np.argsort(perm))
    if data.shape != (file_shape + (1,))[:3]:
        raise InputError(path, f"label shape {labels.shape} does not match the input image "
                               f"{tuple((file_shape + (1,))[p] for p in perm)} (array order)")
    data = data.reshape(file_shape)
    klass = nib.Nifti2Image if props.get("nifti_class") == "Nifti2Image" else nib.Nifti1Image
    if props.get("header") is not None:
        hdr = props["header"].copy()
        hdr.set_data_dtype(np.uint8)
        img = klass(data, props["affine"], header=hdr)
    else:
        img = klass(data, props["affine"])
        img.set_qform(props["affine"], code=1)
        img.set_sform(props["affine"], code=1)
    hdr = img.header
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, int(labels.max()) if labels.size else 0
    hdr.set_intent(LABEL_INTENT, name="labels")
    if classes:
        hdr["descrip"] = ("labels: " + ",".join(f"{i}={n}" for i, n in enumerate(classes)))[:79].encode()
        hdr.extensions = nib.nifti1.Nifti1Extensions(
            [e for e in hdr.extensions if e.get_code() != COMMENT_ECODE]
            + [nib.nifti1.Nifti1Extension(COMMENT_ECODE, label_names_json(classes).encode())])
    if not np.allclose(img.affine, props["affine"], atol=1e-4):
        raise InputError(path, "the written affine would differ from the input's; refusing to write")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        if check is not None:
            check(tmp)
    return path


def _write_2d(path: Path, labels: np.ndarray, props: dict) -> Path:
    shape = tuple(props.get("file_shape", labels.shape))[-2:]
    if labels.shape != shape:
        raise InputError(path, f"label shape {labels.shape} does not match the input image {shape}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(str(tmp), labels.astype(np.uint8))
    elif path.suffix.lower() in (".png", ".bmp", ".gif"):
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp)
    else:
        raise InputError(path, "2D labels are written as PNG or TIFF (JPEG would corrupt class ids)")
    return path

"""DICOM RT Structure Set output for radiotherapy (``predict --output-type dicom-rtstruct``), through rt-utils.

One ROI per class that occurs, its contours drawn on the source slices. Contours are polygons, not voxels:
reading them back (rasterising) loses a little at the edges, measured in docs/INFERENCE.md. The structure set
references the series' instances by SOPInstanceUID, so it can be stored beside them (``--store``).

rt-utils 1.2.7 scales the row direction by PixelSpacing[0] (the spacing between rows) instead of
PixelSpacing[1] (between columns), so on pixels that are not square its contours land stretched; the writer
here runs it with the DICOM-correct pixel-to-patient matrix (``_pixel_to_patient``), checked in the tests by
an independent rasteriser (``read_rtstruct_masks``) on a 0.8 x 0.7 mm series.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from smaformer.errors import InputError, first_line
from smaformer.io_utils import atomic_write

#: ROI display colours, cycled (RGB)
COLOURS = ([255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 128, 0])


def _pixel_to_patient(series_data) -> np.ndarray:
    """(column, row, slice, 1) -> patient mm: the row direction (ImageOrientationPatient[:3]) steps one column,
    PixelSpacing[1]; the column direction steps one row, PixelSpacing[0]."""
    from rt_utils.image_helper import get_slice_directions, get_spacing_between_slices

    first = series_data[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    row_dir, col_dir, slice_dir = get_slice_directions(first)
    mat = np.identity(4, dtype=np.float32)
    mat[:3, 0] = row_dir * column_spacing
    mat[:3, 1] = col_dir * row_spacing
    mat[:3, 2] = slice_dir * get_spacing_between_slices(series_data)
    mat[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    return mat


def write_rtstruct(out: Path, labels: np.ndarray, sources: list, series_folder: Path, classes: list[str]) -> Path:
    """Write ``labels`` (D,H,W, slices in the order of ``sources``, the series' datasets) as an RTSTRUCT."""
    try:
        from rt_utils import RTStructBuilder
    except ImportError:
        raise InputError(None, "--output-type dicom-rtstruct needs rt-utils (pip install -e '.[dicom]')") from None
    try:
        rt = RTStructBuilder.create_new(dicom_series_path=str(series_folder))
    except Exception as e:  # noqa: BLE001 - rt-utils raises bare Exceptions for unusable series
        raise InputError(series_folder, f"cannot build an RTSTRUCT on this series ({first_line(e)})") from None
    index = {str(ds.SOPInstanceUID): z for z, ds in enumerate(sources)}
    if {str(ds.SOPInstanceUID) for ds in rt.series_data} != set(index):
        raise InputError(series_folder, "the folder holds instances beside the series read (rt-utils reads every file "
                                        "below it); put the series in a folder of its own")
    order = [index[str(ds.SOPInstanceUID)] for ds in rt.series_data]       # rt-utils' own slice order
    ordered = labels[order]
    from rt_utils import image_helper
    upstream = image_helper.get_pixel_to_patient_transformation_matrix
    image_helper.get_pixel_to_patient_transformation_matrix = _pixel_to_patient    # see the module docstring
    try:
        for k in (int(v) for v in np.unique(ordered) if v > 0):
            name = classes[k] if k < len(classes) else f"class {k}"
            rt.add_roi(mask=(ordered == k).transpose(1, 2, 0), name=name, color=COLOURS[(k - 1) % len(COLOURS)],
                       description=f"smaformer label {k}")
    finally:
        image_helper.get_pixel_to_patient_transformation_matrix = upstream
    rt.ds.SeriesDescription = "smaformer RTSTRUCT"
    return atomic_write(Path(out), lambda f: rt.ds.save_as(f, enforce_file_format=True))


def read_rtstruct_masks(path: Path, sources: list) -> dict[str, np.ndarray]:
    """ROI name -> (D,H,W) bool mask in the order of ``sources`` (the series' datasets), rasterised from the
    contours' patient coordinates through each slice's own position, orientation and spacing (PIL; independent
    of the writer). Contours of one ROI on one slice combine even-odd (XOR), so an inner contour is a hole (the
    myocardium around the LV)."""
    import pydicom
    from PIL import Image, ImageDraw

    ds = pydicom.dcmread(path)
    names = {r.ROINumber: str(r.ROIName) for r in ds.StructureSetROISequence}
    index = {str(s.SOPInstanceUID): z for z, s in enumerate(sources)}
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros((len(sources), rows, cols), bool)
        for c in getattr(roi, "ContourSequence", []):
            z = index[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            img = sources[z]
            pts = np.asarray(c.ContourData, float).reshape(-1, 3) - np.asarray(img.ImagePositionPatient, float)
            o = np.asarray(img.ImageOrientationPatient, float)
            col = np.round(pts @ o[:3] / float(img.PixelSpacing[1]))             # pixel centres
            row = np.round(pts @ o[3:] / float(img.PixelSpacing[0]))
            plane = Image.new("1", (cols, rows))
            points = list(zip(col.tolist(), row.tolist(), strict=True))
            draw = ImageDraw.Draw(plane)
            if len(points) >= 3:
                draw.polygon(points, fill=1, outline=1)
            else:                                                        # a one- or two-pixel region
                draw.line(points * 2, fill=1)
            mask[z] ^= np.asarray(plane, bool)
        out[names[roi.ReferencedROINumber]] = mask
    return out

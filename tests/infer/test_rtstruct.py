"""--output-type dicom-rtstruct: one ROI per class that occurs, contours on the source slices at the right
place (anisotropic pixels: rt-utils' own matrix stretches them), read back by an independent rasteriser."""
import math

import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_dicom_series
from tiny_models import CT_WINDOW, tiny_unet_checkpoint

from smaformer.cli import main

pytest.importorskip("rt_utils")
pydicom = pytest.importorskip("pydicom")
CT = "totalseg_sample/example_ct_sm.nii.gz"


def _series(data_dir, folder):
    ct = np.asarray(nib.load(str(data_dir / CT)).dataobj)
    a = math.radians(20)
    return write_dicom_series(folder, ct[:, :, 0:5].transpose(2, 1, 0)[:, :40, :44],
                              orientation=(1, 0, 0, 0, math.cos(a), math.sin(a)))


def test_known_labels_round_trip_through_contours(data_dir, tmp_path):
    from smaformer.data.io import read_image
    from smaformer.infer.dicom_seg import read_source_series
    from smaformer.infer.rtstruct import read_rtstruct_masks, write_rtstruct
    files = _series(data_dir, tmp_path / "s")
    _, props = read_image(tmp_path / "s", dtype=None)
    sources = read_source_series(tmp_path / "s", props)
    yy, xx = np.mgrid[:40, :44]
    labels = np.zeros((5, 40, 44), np.uint8)
    for z in range(5):
        labels[z][(yy - 20) ** 2 + (xx - 14) ** 2 < (8 + z) ** 2] = 1          # a growing disc
        labels[z][(np.abs(yy - 20) < 6) & (np.abs(xx - 34) < 5)] = 3           # a box; class 2 never occurs
    out = write_rtstruct(tmp_path / "rt.dcm", labels, sources, tmp_path / "s", ["bg", "liver", "spleen", "kidney"])
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "kidney"]
    refs = {c.ReferencedSOPInstanceUID for roi in ds.ROIContourSequence for cs in roi.ContourSequence
            for c in cs.ContourImageSequence}
    assert refs == {pydicom.dcmread(f).SOPInstanceUID for f in files}          # every slice has contours
    # geometry: the box's contour points lie on its rows 14..26 and columns 29..39 of their slice
    box = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == ds.StructureSetROISequence[1].ROINumber)
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    for c in box.ContourSequence:
        img = by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3) - np.asarray(img.ImagePositionPatient, float)
        o = np.asarray(img.ImageOrientationPatient, float)
        cols, rows = pts @ o[:3] / float(img.PixelSpacing[1]), pts @ o[3:] / float(img.PixelSpacing[0])
        assert 29 <= cols.min() and cols.max() <= 39 and 14 <= rows.min() and rows.max() <= 26, (cols, rows)
    masks = read_rtstruct_masks(out, sources)
    # convex shapes come back voxel for voxel (contours through the boundary pixels' centres); the loss on
    # real, ragged predictions is measured in docs/INFERENCE.md
    assert np.array_equal(masks["kidney"], labels == 3) and np.array_equal(masks["liver"], labels == 1)


def test_cli_writes_an_rtstruct_per_series(data_dir, tmp_path, capsys):
    _series(data_dir, tmp_path / "s")
    ckpt = tiny_unet_checkpoint(tmp_path / "m.pt", ["bg", "liver", "spleen"], intensity=CT_WINDOW)
    assert main(["predict", "-i", str(tmp_path / "s"), "-o", str(tmp_path / "rt.dcm"), "-c", str(ckpt),
                 "--output-type", "dicom-rtstruct", "--quiet"]) == 0
    assert pydicom.dcmread(tmp_path / "rt.dcm").Modality == "RTSTRUCT"
    rc = main(["predict", "-i", str(tmp_path / "s"), "-o", str(tmp_path / "rt.nii.gz"), "-c", str(ckpt),
               "--output-type", "dicom-rtstruct"])
    assert rc == 2 and "named *.dcm" in capsys.readouterr().err

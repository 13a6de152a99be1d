"""``predict --output-type dicom-seg``: a SEG per DICOM series that highdicom and pydicom read back, referencing
the source series and instances, with per-frame pixels equal to the NIfTI prediction of the same series."""
import math
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
from dicom_series import assert_seg_frames_equal, write_dicom_series
from tiny_models import CT_WINDOW, tiny_unet_checkpoint

from smaformer.cli import main
from smaformer.infer.dicom_seg import segment_codes

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

CLASSES = ["background", "liver", "spleen", "mystery organ"]
CT = "totalseg_sample/example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt", CLASSES, intensity=CT_WINDOW)


def _series(data_dir, folder, z=slice(0, 6)):
    """A CT Image Storage series cut from the real TotalSegmentator CT, tilted 20 degrees about x."""
    ct = np.asarray(nib.load(str(data_dir / CT)).dataobj)
    a = math.radians(20)
    return write_dicom_series(folder, ct[:, :, z].transpose(2, 1, 0)[:, :40, :48],
                              orientation=(1, 0, 0, 0, math.cos(a), math.sin(a)))


def test_seg_matches_the_nifti_prediction_frame_by_frame(data_dir, ckpt, tmp_path):
    files = _series(data_dir, tmp_path / "series")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "series"), "-o", str(out / "seg.dcm"), "-c", str(ckpt),
                 "--output-type", "dicom-seg", "--quiet"]) == 0
    assert main(["predict", "-i", str(tmp_path / "series"), "-o", str(out / "seg.nii.gz"), "-c", str(ckpt),
                 "--quiet"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "seg.nii.gz")))   # (slice, row, column)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = pydicom.dcmread(out / "seg.dcm")
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.SegmentationType == "BINARY"
    assert raw.Manufacturer == "smaformer" and raw.SoftwareVersions
    seg = hd.seg.segread(out / "seg.dcm")
    sources = [pydicom.dcmread(f) for f in files]                 # in position order; names and numbers shuffled
    assert [f.name for f in files] != sorted(f.name for f in files)
    assert [int(d.InstanceNumber) for d in sources] != sorted(int(d.InstanceNumber) for d in sources)
    assert seg.get_source_image_uids()[0][1] == sources[0].SeriesInstanceUID == "1.2.3.4.5"
    occurring = [CLASSES[k] for k in np.unique(expected) if k > 0]
    numbers = seg.get_segment_numbers()
    assert occurring and [seg.get_segment_description(n).segment_label for n in numbers] == occurring
    assert len(raw.PerFrameFunctionalGroupsSequence) < len(numbers) * len(sources) or expected.all()  # empty omitted
    normal = np.cross(*np.reshape(np.asarray(sources[0].ImageOrientationPatient, float), (2, 3)))
    first = np.asarray(sources[0].ImagePositionPatient, float)
    at = [int(round(float(np.dot(np.asarray(ds.ImagePositionPatient, float) - first, normal)) / 2.5))
          for ds in sources]                                       # each source's slice, found by its position
    assert_seg_frames_equal(seg, [(ds, expected[z]) for ds, z in zip(sources, at, strict=True)], CLASSES)


def test_segment_codes_for_known_and_unknown_classes():
    assert segment_codes("LV")[1] == ("87878005", "SCT", "Left ventricle")
    assert segment_codes("kidney_left")[1][2] == "Left kidney" and segment_codes("Right Kidney")[1][2] == "Right kidney"
    assert segment_codes("mystery organ") == (("85756007", "SCT", "Tissue"),) * 2


def test_dicom_seg_refusals_come_before_any_seg(data_dir, ckpt, tmp_path, capsys):
    nifti = tmp_path / "ct.nii.gz"
    shutil.copy(data_dir / CT, nifti)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(nifti), "-o", str(out), "-c", str(ckpt), "--output-type", "dicom-seg"]) == 2
    assert "needs DICOM series folders" in capsys.readouterr().err and not out.exists()
    # two series in one folder: a SEG references one, so the case is refused and nothing is written
    _series(data_dir, tmp_path / "two", z=slice(0, 6))
    second = tmp_path / "other"
    files = _series(data_dir, second, z=slice(10, 13))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.9"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(tmp_path / "two" / f"x{f.name}")
    assert main(["predict", "-i", str(tmp_path / "two"), "-o", str(out), "-c", str(ckpt), "--output-type",
                 "dicom-seg"]) == 1
    assert "holds 2 DICOM series" in capsys.readouterr().out and not list(out.glob("*.dcm"))


def test_a_folder_of_series_gives_one_seg_each_with_an_ensemble_and_tta(data_dir, ckpt, tmp_path):
    for name, z in (("s1", slice(0, 4)), ("s2", slice(8, 12))):
        files = _series(data_dir, tmp_path / "cohort" / name, z=z)
        for f in files:          # two series of one study: their own series and instance UIDs
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = f"1.2.3.4.{name[1]}0"
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{name[1]}"
            ds.save_as(f)
    out = tmp_path / "segs"
    assert main(["predict", "-i", str(tmp_path / "cohort"), "-o", str(out), "-c", str(ckpt), str(ckpt), "--tta",
                 "--output-type", "dicom-seg", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.dcm")) == ["s1.dcm", "s2.dcm"]
    for name in ("s1", "s2"):
        seg = hd.seg.segread(out / f"{name}.dcm")
        assert seg.get_source_image_uids()[0][1] == f"1.2.3.4.{name[1]}0"

"""Medical IO: NIfTI geometry round trips, DICOM series, 2D images; the faults each raise one line."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_dicom_series

from smaformer.data.io import nifti_header_props, read_image, read_label_names, write_labels
from smaformer.errors import InputError

sitk = pytest.importorskip("SimpleITK")


def _nifti(path, data, affine=None, dtype=np.int16):
    affine = np.diag([0.8, 0.9, 2.5, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header["descrip"] = b"test scan"
    nib.save(img, str(path))
    return path


def test_nifti_round_trip_keeps_shape_affine_header(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[-0.8, 0.1, 0, 90], [0, 0.9, 0, -100], [0, 0, 2.5, 40], [0, 0, 0, 1]])
    src = _nifti(tmp_path / "ct.nii.gz", rng.integers(-1000, 1000, (20, 16, 7)), affine)
    arr, props = read_image(src)
    assert arr.shape == (7, 16, 20) and arr.dtype == np.float32
    assert props["spacing"] == pytest.approx((2.5, np.hypot(0.1, 0.9), 0.8), abs=1e-6)
    assert nifti_header_props(src)["shape"] == (7, 16, 20)
    labels = (arr > 0).astype(np.uint8) + (arr > 500)
    out = write_labels(tmp_path / "seg.nii.gz", labels, props, classes=["background", "low", "high"])
    back, ref = nib.load(str(out)), nib.load(str(src))
    assert back.shape == ref.shape and back.get_data_dtype() == np.uint8
    assert np.allclose(back.affine, ref.affine) and np.allclose(back.header.get_qform(), ref.header.get_qform())
    assert np.array_equal(np.asarray(back.dataobj), labels.transpose(2, 1, 0))
    assert back.header["intent_code"] == 1002 and b"1=low" in back.header["descrip"].tobytes()
    assert read_label_names(out) == ["background", "low", "high"]
    with pytest.raises(InputError, match="does not match"):
        write_labels(tmp_path / "bad.nii.gz", labels[:, :-1], props)


def test_real_ct_round_trip(data_dir, tmp_path):
    src = data_dir / "totalseg_sample" / "example_seg.nii.gz"
    arr, props = read_image(src)
    assert arr.shape == (30, 101, 122) and props["spacing"] == (3.0, 3.0, 3.0)
    out = write_labels(tmp_path / "seg.nii.gz", arr.astype(np.uint8), props)
    back, ref = nib.load(str(out)), nib.load(str(src))
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(ref.dataobj)) and np.allclose(back.affine, ref.affine)


def test_4d_nifti_needs_a_frame(tmp_path):
    src = _nifti(tmp_path / "cine.nii.gz", np.arange(4 * 5 * 3 * 6).reshape(4, 5, 3, 6))
    with pytest.raises(InputError, match=r"cine.nii.gz: 4D NIfTI with 6 frames; choose one with frame=N"):
        read_image(src)
    arr, props = read_image(src, frame=2)
    assert arr.shape == (3, 5, 4) and arr[0, 0, 1] == 1 * 5 * 3 * 6 + 2
    out = write_labels(tmp_path / "seg.nii.gz", np.zeros((3, 5, 4), np.uint8), props)
    assert nib.load(str(out)).shape == (4, 5, 3)
    with pytest.raises(InputError, match="frame 9 out of range"):
        read_image(src, frame=9)


@pytest.mark.parametrize("content, fault", [
    (b"", "empty file"),
    (b"this is not a nifti file at all" * 20, "not a readable NIfTI"),
    (None, "truncated"),
])
def test_bad_nifti_files(tmp_path, content, fault):
    path = tmp_path / "bad.nii.gz"
    if content is None:
        _nifti(tmp_path / "good.nii.gz", np.ones((30, 30, 30)))
        raw = gzip.decompress((tmp_path / "good.nii.gz").read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=fault) as e:
        read_image(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_wrong_ndim_and_nonfinite(tmp_path):
    with pytest.raises(InputError, match="5 dimensions"):
        read_image(_nifti(tmp_path / "five.nii", np.zeros((2, 2, 2, 2, 2))))
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN/inf"):
        read_image(_nifti(tmp_path / "nan.nii.gz", data, dtype=np.float32))
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_dicom_series_sorted_with_geometry(tmp_path):
    vol = (np.arange(5)[:, None, None] * 100 + np.zeros((5, 12, 10))).astype(np.int16)
    write_dicom_series(tmp_path / "series", vol)
    arr, props = read_image(tmp_path / "series")
    assert arr.shape == (5, 12, 10)
    assert np.array_equal(arr[:, 0, 0], [0, 100, 200, 300, 400])  # sorted by position, not by file name
    assert props["spacing"] == pytest.approx((2.5, 0.8, 0.7))
    assert props["affine"][:3, 3] == pytest.approx((100.0, 120.0, 30.0))  # LPS origin -> RAS
    out = write_labels(tmp_path / "seg.nii.gz", (arr > 150).astype(np.uint8), props, ["bg", "fg"])
    back = nib.load(str(out))
    assert back.shape == (10, 12, 5) and np.allclose(back.affine, props["affine"])
    assert np.allclose(back.header.get_zooms(), (0.7, 0.8, 2.5))


def test_dicom_oblique_orientation_matches_simpleitk_nifti_writer(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    orient = (1.0, 0.0, 0.0, 0.0, c, -s)  # rows along x, columns tilted between y and -z
    vol = np.random.default_rng(0).integers(0, 1000, (4, 9, 11)).astype(np.int16)
    write_dicom_series(tmp_path / "s", vol, orientation=orient)
    arr, props = read_image(tmp_path / "s")
    assert np.array_equal(arr, vol)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s"))
    sitk.WriteImage(sitk.ReadImage(files), str(tmp_path / "ref.nii.gz"))
    assert np.allclose(props["affine"], nib.load(str(tmp_path / "ref.nii.gz")).affine, atol=1e-4)


def test_dicom_series_with_broken_or_missing_slice(tmp_path):
    vol = np.zeros((6, 8, 8), np.int16)
    files = write_dicom_series(tmp_path / "a", vol)
    files[3].write_bytes(files[3].read_bytes()[:200])  # truncated slice
    with pytest.raises(InputError, match="broken DICOM slice") as e:
        read_image(tmp_path / "a")
    assert str(e.value).startswith(str(files[3])) and "\n" not in str(e.value)
    files = write_dicom_series(tmp_path / "b", vol)
    files[2].unlink()
    with pytest.raises(InputError, match="a slice of the series is missing"):
        read_image(tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        read_image(tmp_path / "empty")


def test_png_tiff_images_and_label_writing(tmp_path):
    import tifffile
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    arr, props = read_image(tmp_path / "a.png")
    assert arr.shape == (3, 20, 30) and not props["is_volume"] and np.array_equal(arr[1], rgb[..., 1])
    np.testing.assert_allclose(read_image(tmp_path / "a.png", scale_8bit=True)[0], arr / 255)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpg")
    assert read_image(tmp_path / "g.jpg")[0].shape == (1, 20, 30)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 20, 30), np.uint16))
    arr, props = read_image(tmp_path / "stack.tif")
    assert arr.shape == (7, 20, 30) and props["is_volume"]
    write_labels(tmp_path / "stack_seg.tif", np.ones((7, 20, 30), np.uint8), props)
    assert tifffile.imread(tmp_path / "stack_seg.tif").shape == (7, 20, 30)
    labels = np.zeros((20, 30), np.uint8)
    labels[5:9, 3:12] = 2
    out = write_labels(tmp_path / "out.png", labels, read_image(tmp_path / "a.png")[1])
    assert np.array_equal(np.asarray(Image.open(out)), labels)
    with pytest.raises(InputError, match="JPEG would corrupt"):
        write_labels(tmp_path / "out.jpg", labels, read_image(tmp_path / "a.png")[1])
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match="zero.png: empty file"):
        read_image(tmp_path / "zero.png")


def test_grey_alpha_png_is_one_grey_image(tmp_path):
    """A grey+alpha PNG (mode LA) was read as a 40-slice volume; it is one 2D image, alpha dropped."""
    from PIL import Image

    from smaformer.data.io import read_image
    grey = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    la = np.stack([grey, np.full_like(grey, 128)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    arr, props = read_image(tmp_path / "la.png")
    assert arr.shape == (1, 40, 30) and props["is_volume"] is False
    np.testing.assert_array_equal(arr[0], grey)


def _edit(path, **tags):
    import pydicom
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path)


def test_dicom_series_faults_name_the_file_and_the_fault(tmp_path):
    """Each a line of our own naming the right file (issue 27 section 4)."""
    vol = np.zeros((6, 8, 8), np.int16)
    files = write_dicom_series(tmp_path / "nopos", vol)
    _edit(files[3], ImagePositionPatient=None)
    with pytest.raises(InputError, match="no ImagePositionPatient") as e:
        read_image(tmp_path / "nopos")
    assert str(e.value).startswith(str(files[3]))
    files = write_dicom_series(tmp_path / "dup", vol)
    import pydicom
    _edit(files[3], ImagePositionPatient=pydicom.dcmread(files[2]).ImagePositionPatient)
    with pytest.raises(InputError, match=r"same position as IM\d{4}\.dcm: a duplicated slice") as e:
        read_image(tmp_path / "dup")
    import re
    named = {str(e.value).split(":")[0].rsplit("/", 1)[-1], re.search(r"same position as (\S+):", str(e.value))[1]}
    assert named == {files[2].name, files[3].name}
    files = write_dicom_series(tmp_path / "loc", vol)
    _edit(files[4], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(InputError, match="another orientation .* a localizer") as e:
        read_image(tmp_path / "loc")
    assert str(e.value).startswith(str(files[4]))
    import SimpleITK as sitk
    (tmp_path / "multi").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 8, 8), np.uint16)), str(tmp_path / "multi" / "mf.dcm"))
    with pytest.raises(InputError, match=r"mf\.dcm: an enhanced multi-frame DICOM \(5 frames in one file\)"):
        read_image(tmp_path / "multi")


def test_uneven_slice_steps_warn_with_the_worst_offset(tmp_path, capfd):
    """One 3.5 mm step among 2.5 mm ones: read as today (mean step), with our own warning giving the worst
    slice's offset in mm, and nothing from SimpleITK on stderr."""
    import pydicom
    vol = np.zeros((6, 8, 8), np.int16)
    files = write_dicom_series(tmp_path / "s", vol)
    for f in files[3:]:
        p = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
        _edit(f, ImagePositionPatient=[p[0], p[1], p[2] + 1.0])
    arr, props = read_image(tmp_path / "s")
    assert arr.shape == (6, 8, 8)
    (w,) = props["warnings"]
    assert "uneven slice steps (2.50 to 3.50 mm); the volume uses their mean 2.700 mm" in w
    assert "lies 0.40 mm off its place" in w           # slice 2 sits at 5.0 mm, the mean grid puts it at 5.4
    assert "WARNING" not in capfd.readouterr().err
    # predict writes the NIfTI as asked and records the warning (with the offset) in predict.json
    import json

    from tiny_models import tiny_unet_checkpoint

    from smaformer.infer.predict import predict
    ckpt = tiny_unet_checkpoint(tmp_path / "m.pt", ["bg", "fg"])
    lines = []
    (res,) = predict(tmp_path / "s", tmp_path / "seg.nii.gz", ckpt, device="cpu", progress=False, log=lines.append)
    assert res.error is None and any("lies 0.40 mm off" in ln for ln in lines if ln.startswith("WARNING"))
    assert "lies 0.40 mm off" in json.loads((tmp_path / "seg.json").read_text())["cases"][0]["warnings"][0]

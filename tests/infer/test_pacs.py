"""Into the PACS and back (issue 28): a real Orthanc (tests/orthanc.py), a series made from the real CT,
predicted from its DICOMweb URL, the SEG stored back and compared voxel for voxel; every failure one line."""
import json
import math

import nibabel as nib
import numpy as np
import orthanc
import pytest
from dicom_series import assert_seg_frames_equal, write_dicom_series
from tiny_models import CT_WINDOW, tiny_unet_checkpoint

from smaformer.cli import main

if orthanc.why_not():
    pytest.skip(orthanc.why_not(), allow_module_level=True)
hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

CLASSES = ["background", "liver", "spleen", "mystery organ"]
CT = "totalseg_sample/example_ct_sm.nii.gz"
REFUSE = "function ReceivedInstanceFilter(dicom, origin, info)\n" \
         "  return not (dicom.Modality == 'SEG' and dicom.PatientID == 'REFUSE-SEG')\nend\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = orthanc.start(tmp_path_factory.mktemp("orthanc"), lua=REFUSE)
    yield s
    orthanc.stop(s)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt", CLASSES, intensity=CT_WINDOW)


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("SMAFORMER_PACS_USER", orthanc.USER)
    monkeypatch.setenv("SMAFORMER_PACS_PASSWORD", orthanc.PASSWORD)


def _series(data_dir, folder, z, patient="TEST001", study="1.2.826.0.1.3680043.10.1", series="1"):
    """A tilted CT series cut from the real TotalSegmentator CT, with its own study/series UIDs."""
    ct = np.asarray(nib.load(str(data_dir / CT)).dataobj)
    a = math.radians(20)
    files = write_dicom_series(folder, ct[:, :, z].transpose(2, 1, 0)[:, :40, :44],
                               orientation=(1, 0, 0, 0, math.cos(a), math.sin(a)))
    uid = f"{study}.{series}"
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, uid, patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{i + 1}"
        ds.save_as(f)
    return files, study, uid


def _client(server):
    from smaformer.infer.pacs import web_client
    return web_client(server.dicomweb)


def test_round_trip_over_dicomweb(server, ckpt, data_dir, tmp_path, creds, capsys):
    files, study, series = _series(data_dir, tmp_path / "src", slice(0, 6))
    orthanc.upload(server, files)
    url = f"{server.dicomweb}/studies/{study}/series/{series}"
    with orthanc.inside(server):
        rc = main(["predict", "-i", url, "-o", str(tmp_path / "seg.dcm"), "-c", str(ckpt), "--output-type",
                   "dicom-seg", "--store", server.dicomweb, "--quiet"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "1/1 cases segmented" in out and "stored seg.dcm" in out
        found = _client(server).search_for_series(study_instance_uid=study)
        segs = [s for s in found if s["00080060"]["Value"][0] == "SEG"]
        assert len(segs) == 1                                 # the SEG sits in the source's study
        seg_uid = segs[0]["0020000E"]["Value"][0]
        stored = _client(server).retrieve_series(study_instance_uid=study, series_instance_uid=seg_uid)
    local = pydicom.dcmread(tmp_path / "seg.dcm")
    assert len(stored) == 1 and stored[0].SOPInstanceUID == local.SOPInstanceUID
    assert np.array_equal(stored[0].pixel_array, local.pixel_array)          # voxel for voxel, as written
    # and the local SEG equals the NIfTI prediction of the same series, frame by frame
    assert main(["predict", "-i", str(tmp_path / "src"), "-o", str(tmp_path / "seg.nii.gz"), "-c", str(ckpt),
                 "--quiet"]) == 0
    import SimpleITK as sitk
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert_seg_frames_equal(hd.seg.Segmentation.from_dataset(stored[0]),
                            [(pydicom.dcmread(f), expected[z]) for z, f in enumerate(files)], CLASSES)
    # a second run stores a new series: nothing on the archive is replaced
    with orthanc.inside(server):
        assert main(["predict", "-i", url, "-o", str(tmp_path / "seg2.dcm"), "-c", str(ckpt), "--output-type",
                     "dicom-seg", "--store", server.dicomweb, "--quiet"]) == 0
        found = _client(server).search_for_series(study_instance_uid=study)
    assert sum(s["00080060"]["Value"][0] == "SEG" for s in found) == 2


def test_a_study_url_segments_each_image_series_and_skips_the_others(server, ckpt, data_dir, tmp_path, creds,
                                                                      capsys):
    study = "1.2.826.0.1.3680043.10.2"
    for k, z in enumerate((slice(0, 4), slice(10, 13))):
        files, _, _ = _series(data_dir, tmp_path / f"s{k}", z, study=study, series=str(k + 1))
        orthanc.upload(server, files)
    with orthanc.inside(server):
        rc = main(["predict", "-i", f"{server.dicomweb}/studies/{study}", "-o", str(tmp_path / "segs"), "-c",
                   str(ckpt), "--output-type", "dicom-seg", "--store", server.dicomweb, "--quiet"])
        assert rc == 0 and "2/2 cases segmented" in capsys.readouterr().out
        # now the study holds 2 SEGs too: a second run segments the 2 image series only
        rc = main(["predict", "-i", f"{server.dicomweb}/studies/{study}", "-o", str(tmp_path / "segs2"), "-c",
                   str(ckpt), "--output-type", "dicom-seg", "--quiet"])
    assert rc == 0 and "2/2 cases segmented" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "segs2").glob("*.dcm")) == [f"{study}.1.dcm", f"{study}.2.dcm"]


def test_rtstruct_is_stored_beside_its_series(server, ckpt, data_dir, tmp_path, creds, capsys):
    files, study, series = _series(data_dir, tmp_path / "src", slice(0, 4), study="1.2.826.0.1.3680043.10.7")
    orthanc.upload(server, files)
    with orthanc.inside(server):
        rc = main(["predict", "-i", f"{server.dicomweb}/studies/{study}/series/{series}", "-o",
                   str(tmp_path / "rt.dcm"), "-c", str(ckpt), "--output-type", "dicom-rtstruct", "--store",
                   server.dimse, "--quiet"])
        assert rc == 0, capsys.readouterr().out
        found = _client(server).search_for_series(study_instance_uid=study)
    assert sorted(s["00080060"]["Value"][0] for s in found) == ["CT", "RTSTRUCT"]


@pytest.mark.parametrize("columns", [44, 48])
def test_orthanc_decodes_one_bit_frames_only_when_columns_are_a_multiple_of_8(server, ckpt, data_dir, tmp_path,
                                                                              creds, columns):
    """Orthanc 1.10's frame decoder refuses 1-bit SEG frames whose column count is not a multiple of 8 (per-frame
    WADO-RS 400, preview 415); whole-instance retrieval works, and that is what a viewer or our reader uses.
    We do not pad: a SEG keeps its source's matrix so that its frames lie pixel on pixel on the images."""
    import requests
    study = f"1.2.826.0.1.3680043.10.8{columns}"
    ct = np.asarray(nib.load(str(data_dir / CT)).dataobj)
    files = write_dicom_series(tmp_path / "s", ct[:, :, 0:3].transpose(2, 1, 0)[:, :40, :columns])
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{i + 1}"
        ds.save_as(f)
    orthanc.upload(server, files)
    auth = (orthanc.USER, orthanc.PASSWORD)
    with orthanc.inside(server):
        assert main(["predict", "-i", f"{server.dicomweb}/studies/{study}/series/{study}.1", "-o",
                     str(tmp_path / "seg.dcm"), "-c", str(ckpt), "--output-type", "dicom-seg", "--store",
                     server.dicomweb, "--quiet"]) == 0
        seg = pydicom.dcmread(tmp_path / "seg.dcm")
        assert seg.Columns == columns                                      # not padded
        where = f"{server.dicomweb}/studies/{study}/series/{seg.SeriesInstanceUID}/instances/{seg.SOPInstanceUID}"
        frame = requests.get(f"{where}/frames/1", auth=auth,
                             headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        whole = _client(server).retrieve_instance(study, seg.SeriesInstanceUID, seg.SOPInstanceUID)
    assert frame.status_code == (200 if columns % 8 == 0 else 400)
    assert np.array_equal(whole.pixel_array, seg.pixel_array)


def test_orthanc_segments_a_new_series_by_itself(ckpt, data_dir, tmp_path, creds):
    """docs/pacs/orthanc_autoseg.lua: when a series becomes stable, Orthanc runs smaformer predict on it and the
    SEG appears in the study, with no one calling anything."""
    import os
    import sys
    import time
    from pathlib import Path
    lua = (Path(__file__).resolve().parents[2] / "docs" / "pacs" / "orthanc_autoseg.lua").read_text()
    out = tmp_path / "segs"
    out.mkdir()
    env = {**os.environ, "SMAFORMER_BIN": str(Path(sys.executable).with_name("smaformer")), "SMAFORMER_CKPT": str(ckpt),
           "SMAFORMER_OUT": str(out), "SMAFORMER_DICOMWEB": f"http://127.0.0.1:{orthanc.HTTP_PORT}/dicom-web",
           "SMAFORMER_PACS_USER": orthanc.USER, "SMAFORMER_PACS_PASSWORD": orthanc.PASSWORD}
    server = orthanc.start(tmp_path / "o", lua=lua, env=env, StableAge=1)
    try:
        files, study, series = _series(data_dir, tmp_path / "src", slice(0, 3), study="1.2.826.0.1.3680043.10.9")
        orthanc.upload(server, files)
        modalities, deadline = [], time.time() + 120
        with orthanc.inside(server):
            while "SEG" not in modalities and time.time() < deadline:
                time.sleep(1)
                modalities = [s["00080060"]["Value"][0] for s in _client(server).search_for_series(study)]
    finally:
        orthanc.stop(server)
    log = out / "smaformer.log"
    assert sorted(modalities) == ["CT", "SEG"], log.read_text() if log.exists() else "smaformer never ran"
    assert (out / f"{series}.dcm").is_file()


def _one_failure(capsys, argv, expect):
    rc = main(argv)
    out = capsys.readouterr().out
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED")]
    assert rc == 1 and len(failed) == 1 and expect in failed[0], out
    return failed[0]


def test_failures_are_one_line_and_lose_nothing(server, ckpt, data_dir, tmp_path, creds, capsys, monkeypatch):
    files, study, series = _series(data_dir, tmp_path / "src", slice(0, 3), patient="REFUSE-SEG",
                                   study="1.2.826.0.1.3680043.10.3")
    orthanc.upload(server, files)
    url = f"{server.dicomweb}/studies/{study}/series/{series}"
    common = ["-c", str(ckpt), "--output-type", "dicom-seg", "--quiet"]
    with orthanc.inside(server):
        # a server that is down
        line = _one_failure(capsys, ["predict", "-i", f"http://127.0.0.1:9/dicom-web/studies/{study}/series/{series}",
                                     "-o", str(tmp_path / "a.dcm"), *common], "server not reachable")
        assert series in line
        # a wrong password
        monkeypatch.setenv("SMAFORMER_PACS_PASSWORD", "wrong")
        _one_failure(capsys, ["predict", "-i", url, "-o", str(tmp_path / "b.dcm"), *common], "refused: HTTP 401")
        monkeypatch.setenv("SMAFORMER_PACS_PASSWORD", orthanc.PASSWORD)
        # a STOW-RS refusal (the archive's filter refuses this patient's SEGs): the local SEG stays, nothing stored
        _one_failure(capsys, ["predict", "-i", url, "-o", str(tmp_path / "c.dcm"), *common, "--store",
                              server.dicomweb], "not stored: refused")
        assert (tmp_path / "c.dcm").is_file()
        found = _client(server).search_for_series(study_instance_uid=study)
        assert [s["00080060"]["Value"][0] for s in found] == ["CT"]
    # a non-image series: a SEG asked for by its URL
    other, study2, series2 = _series(data_dir, tmp_path / "src2", slice(0, 3), study="1.2.826.0.1.3680043.10.4")
    orthanc.upload(server, other)
    with orthanc.inside(server):
        assert main(["predict", "-i", f"{server.dicomweb}/studies/{study2}/series/{series2}", "-o",
                     str(tmp_path / "d.dcm"), *common, "--store", server.dicomweb]) == 0
        seg = next(s for s in _client(server).search_for_series(study_instance_uid=study2)
                   if s["00080060"]["Value"][0] == "SEG")["0020000E"]["Value"][0]
        capsys.readouterr()
        _one_failure(capsys, ["predict", "-i", f"{server.dicomweb}/studies/{study2}/series/{seg}", "-o",
                              str(tmp_path / "e.dcm"), *common], "not an image series (modality SEG)")


def test_round_trip_over_dimse(server, ckpt, data_dir, tmp_path, creds, capsys):
    """C-FIND + C-GET of the study's image series, C-STORE of each SEG, the SEG read back over DICOMweb equal
    to the local file; a rejected C-STORE (the archive's filter) and a server that is down are one line each."""
    study = "1.2.826.0.1.3680043.10.5"
    files, _, series = _series(data_dir, tmp_path / "src", slice(2, 6), study=study)
    orthanc.upload(server, files)
    with orthanc.inside(server):
        rc = main(["predict", "-i", f"{server.dimse}/{study}", "-o", str(tmp_path / "segs"), "-c", str(ckpt),
                   "--output-type", "dicom-seg", "--store", server.dimse, "--quiet"])
        out = capsys.readouterr().out
        assert rc == 0 and "1/1 cases segmented" in out and f"stored {series}.dcm at {server.dimse}" in out, out
        found = _client(server).search_for_series(study_instance_uid=study)
        seg_uid = next(s["0020000E"]["Value"][0] for s in found if s["00080060"]["Value"][0] == "SEG")
        (stored,) = _client(server).retrieve_series(study_instance_uid=study, series_instance_uid=seg_uid)
        local = pydicom.dcmread(tmp_path / "segs" / f"{series}.dcm")
        assert stored.SOPInstanceUID == local.SOPInstanceUID and np.array_equal(stored.pixel_array, local.pixel_array)
        # the same series asked for by its series UID gives the same labels as over DICOMweb
        assert main(["predict", "-i", f"{server.dicomweb}/studies/{study}/series/{series}", "-o",
                     str(tmp_path / "web.dcm"), "-c", str(ckpt), "--output-type", "dicom-seg", "--quiet"]) == 0
        assert np.array_equal(pydicom.dcmread(tmp_path / "web.dcm").pixel_array, local.pixel_array)
        refused, rstudy, rseries = _series(data_dir, tmp_path / "r", slice(0, 3), patient="REFUSE-SEG",
                                           study="1.2.826.0.1.3680043.10.6")
        orthanc.upload(server, refused)
        capsys.readouterr()
        _one_failure(capsys, ["predict", "-i", f"{server.dimse}/{rstudy}/{rseries}", "-o", str(tmp_path / "r.dcm"),
                              "-c", str(ckpt), "--output-type", "dicom-seg", "--store", server.dimse, "--quiet"],
                     "not stored: rejected by the archive")
        assert (tmp_path / "r.dcm").is_file()      # kept locally; the summary says the store failed
        (case,) = json.loads((tmp_path / "r.json").read_text())["cases"]
        assert case["output"] == str(tmp_path / "r.dcm") and "not stored: rejected by the archive" in case["error"]
        _one_failure(capsys, ["predict", "-i", f"dimse://ORTHANC@127.0.0.1:9/{rstudy}/{rseries}", "-o",
                              str(tmp_path / "x.dcm"), "-c", str(ckpt), "--output-type", "dicom-seg", "--quiet"],
                     "no association with ORTHANC@127.0.0.1:9 (server down")
        # our AE title comes from --ae-title: one the archive does not know gets nothing from it
        _one_failure(capsys, ["predict", "-i", f"{server.dimse}/{rstudy}/{rseries}", "-o", str(tmp_path / "s.dcm"),
                              "-c", str(ckpt), "--output-type", "dicom-seg", "--quiet", "--ae-title", "STRANGER"],
                     "C-GET incomplete or refused (no answer: does ORTHANC allow C-GET for AE title STRANGER?")
        assert not (tmp_path / "s.dcm").exists()


def test_a_localizer_series_is_refused_over_both_protocols(server, ckpt, data_dir, tmp_path, creds, capsys):
    files, study, series = _series(data_dir, tmp_path / "src", slice(0, 3), study="1.2.826.0.1.3680043.10.10")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    orthanc.upload(server, files)
    with orthanc.inside(server):
        for url in (f"{server.dicomweb}/studies/{study}/series/{series}", f"{server.dimse}/{study}/{series}"):
            _one_failure(capsys, ["predict", "-i", url, "-o", str(tmp_path / "l.dcm"), "-c", str(ckpt),
                                  "--output-type", "dicom-seg", "--quiet"], "a localizer series: nothing to segment")
    assert not (tmp_path / "l.dcm").exists()


def test_store_needs_a_seg_and_credentials_stay_off_the_command_line(tmp_path, capsys):
    rc = main(["predict", "-i", "http://127.0.0.1:9/dicom-web/studies/1.2/series/1.2.3", "-o", str(tmp_path / "x"),
               "-c", "m.pt", "--store", "http://127.0.0.1:9/dicom-web"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--store sends DICOM objects: add --output-type dicom-seg" in err[0]
    rc = main(["predict", "-i", "http://127.0.0.1:9/dicom-web/series/1.2.3", "-o", str(tmp_path / "x"), "-c", "m.pt"])
    assert rc == 2 and "not a DICOMweb study or series URL" in capsys.readouterr().err


@pytest.mark.parametrize("title", ["SEVENTEEN_LETTERS", "   ", "A\\B"])
def test_an_ae_title_dicom_does_not_allow_is_refused_before_any_work(tmp_path, capsys, title):
    rc = main(["predict", "-i", "dimse://ORTHANC@127.0.0.1:9/1.2", "-o", str(tmp_path / "x"), "-c", "m.pt",
               "--ae-title", title])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"our AE title {title!r} is not 1-16 characters" in err[0], err
    assert not (tmp_path / "x").exists()

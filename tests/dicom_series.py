"""A DICOM series writer for tests: real position/orientation tags; file names and instance numbers shuffled
against the slice positions (a seeded permutation each), so only the positions give the order."""
from __future__ import annotations

import numpy as np


def write_dicom_series(folder, volume: np.ndarray, spacing=(0.7, 0.8), thickness=2.5,
                       origin=(-100.0, -120.0, 30.0), orientation=(1, 0, 0, 0, 1, 0)) -> list:
    """Write (D,H,W) int16 as one DICOM file per slice with real position/orientation tags; returns the files
    in slice (position) order."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    rng = np.random.default_rng(len(volume))
    names, numbers = rng.permutation(len(volume)), rng.permutation(len(volume)) + 1
    for z, plane in enumerate(volume):
        img = sitk.GetImageFromArray(plane.astype(np.int16))
        img.SetSpacing((spacing[0], spacing[1]))  # (x, y)
        normal = np.cross(orientation[:3], orientation[3:])
        pos = np.asarray(origin) + thickness * z * normal
        tags = {"0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": "1.2.3.4.5", "0020|0052": "1.2.3.4.6",
                "0010|0010": "Test^Patient", "0010|0020": "TEST001", "0008|0020": "20261204",
                "0020|0032": "\\".join(f"{p:.6f}" for p in pos), "0020|0037": "\\".join(str(v) for v in orientation),
                "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(thickness),
                "0020|0013": str(numbers[z]), "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"1.2.3.4.5.{z + 1}"}
        for k, v in tags.items():
            img.SetMetaData(k, v)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"IM{names[z]:04d}.dcm"))
        w.Execute(img)
        files.append(folder / f"IM{names[z]:04d}.dcm")
    return files


def assert_seg_frames_equal(seg, pairs, classes: list[str]) -> None:
    """Each ``(source dataset, expected (H,W) class ids)`` pair: the SEG's frame for that source instance,
    found by its SOP Instance UID and relabelled to segment order, equals the expected labels."""
    numbers = seg.get_segment_numbers()
    names = [seg.get_segment_description(n).segment_label for n in numbers]
    for ds, expected in pairs:
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID], segment_numbers=numbers, combine_segments=True,
            relabel=True, skip_overlap_checks=True, assert_missing_frames_are_empty=True)[0]
        truth = np.zeros_like(expected)
        for j, name in enumerate(names, start=1):
            truth[expected == classes.index(name)] = j
        assert np.array_equal(frame, truth), ds.SOPInstanceUID

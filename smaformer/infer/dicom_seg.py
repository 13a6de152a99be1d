"""DICOM Segmentation (SEG) output for DICOM series input (``predict --output-type dicom-seg``).

One SEG object per series, written with highdicom (which checks the standard's rules as it writes). It
references the source series and each source instance, and takes the frame geometry from them, so PACS
and viewers (3D Slicer, OHIF) overlay it on the scan without resampling. Segments: one per foreground class
that occurs in the prediction, labelled with the checkpoint's class name and coded from ``SEGMENT_CODES``
(a generic "Tissue" code for a class it does not know); binary segmentation, empty frames omitted.

The label volume comes from ``read_image``'s DICOM reader in SimpleITK's (slice, row, column) order, with
slices sorted by position as GDCM sorts them; ``props["dicom_files"]`` lists the files in that order, so
frame ``z`` of the prediction belongs to ``dicom_files[z]``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from smaformer.errors import InputError, first_line
from smaformer.io_utils import atomic_path

# category, then type, as (code value, scheme, meaning); SNOMED CT codes as DICOM CID 7150/7166 use them
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ABNORMAL = ("49755003", "SCT", "Morphologically Abnormal Structure")
_TISSUE = ("85756007", "SCT", "Tissue")
SEGMENT_CODES: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    # ACDC
    "rv": (_ANATOMY, ("53085002", "SCT", "Right ventricle")),
    "myo": (_ANATOMY, ("74281007", "SCT", "Myocardium")),
    "lv": (_ANATOMY, ("87878005", "SCT", "Left ventricle")),
    # Synapse (TransUNet's label ids 1-8)
    "aorta": (_ANATOMY, ("15825003", "SCT", "Aorta")),
    "gallbladder": (_ANATOMY, ("28231008", "SCT", "Gallbladder")),
    "kidney_left": (_ANATOMY, ("18639004", "SCT", "Left kidney")),
    "kidney_right": (_ANATOMY, ("9846003", "SCT", "Right kidney")),
    "liver": (_ANATOMY, ("10200004", "SCT", "Liver")),
    "pancreas": (_ANATOMY, ("15776009", "SCT", "Pancreas")),
    "spleen": (_ANATOMY, ("78961009", "SCT", "Spleen")),
    "stomach": (_ANATOMY, ("69695003", "SCT", "Stomach")),
    # LiTS, DRIVE
    "tumor": (_ABNORMAL, ("108369006", "SCT", "Neoplasm")),
    "vessel": (_ANATOMY, ("59820001", "SCT", "Blood vessel")),
}
ALIASES = {"right ventricle": "rv", "myocardium": "myo", "left ventricle": "lv", "tumour": "tumor",
           "kidney left": "kidney_left", "kidney right": "kidney_right", "left kidney": "kidney_left",
           "right kidney": "kidney_right", "gall bladder": "gallbladder", "vessels": "vessel"}


# what a SEG copies from or references in each source instance (highdicom refuses a source without them)
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def segment_codes(name: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """(category, type) codes of a class name; "Tissue" for a name the table does not know."""
    key = name.strip().lower().replace("-", " ")
    key = ALIASES.get(key, key.replace(" ", "_"))
    return SEGMENT_CODES.get(key, (_TISSUE, _TISSUE))


def read_source_series(case: Path, props: dict) -> list:
    """The series' instances (metadata only) in the order of the label volume's slices; refuses, in one line,
    what a SEG cannot reference unambiguously: several series in the folder, or slices that disagree on
    orientation, size or series."""
    import pydicom

    if props.get("format") != "dicom":
        raise InputError(case, "--output-type dicom-seg needs a DICOM series as input: a SEG references its "
                               "source instances")
    if props.get("n_series", 1) > 1:
        raise InputError(case, f"holds {props['n_series']} DICOM series; a SEG references one: put each series in "
                               "its own folder")
    sources = []
    for f in props["dicom_files"]:
        try:
            sources.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:  # noqa: BLE001 - any pydicom failure is a fault of that file
            raise InputError(f, f"unreadable DICOM slice ({first_line(e)})") from None
    first = sources[0]
    for ds, f in zip(sources, props["dicom_files"], strict=True):
        missing = [k for k in REQUIRED if not ds.get(k)]
        if missing:
            raise InputError(f, f"lacks {', '.join(missing)}, which a SEG needs to reference it")
        for key in ("SeriesInstanceUID", "Rows", "Columns"):
            if ds.get(key) != first.get(key):
                raise InputError(f, f"{key} {ds.get(key)} differs from the series' {first.get(key)}")
        iop = np.asarray(ds.get("ImageOrientationPatient", [0] * 6), float)
        if not np.allclose(iop, np.asarray(first.get("ImageOrientationPatient", [0] * 6), float), atol=1e-4):
            raise InputError(f, "slice orientation differs from the rest of the series (mixed orientations)")
    return sources


def write_dicom_seg(path: Path, labels: np.ndarray, sources: list, classes: list[str], *, model_name: str,
                    version: str) -> Path:
    """Write ``labels`` (slices, rows, columns; one slice per source instance) as a binary DICOM SEG."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    present = [int(k) for k in np.unique(labels) if k > 0]
    if not present:
        raise InputError(path, "no foreground class in the prediction: a SEG needs at least one segment; "
                               "nothing written")
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise InputError(path, f"labels {labels.shape} do not match the series ({len(sources)} slices of "
                               f"{sources[0].Rows}x{sources[0].Columns})")
    algorithm = hd.AlgorithmIdentificationSequence(name=f"smaformer {model_name}", version=version,
                                                   family=Code("123110", "DCM", "Artificial Intelligence"))
    descriptions, segment_of = [], np.zeros(max(present) + 1, np.uint8)
    for number, k in enumerate(present, start=1):
        name = classes[k] if k < len(classes) else f"class {k}"
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=Code(*category),
            segmented_property_type=Code(*kind), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
        segment_of[k] = number
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segment_of[labels], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(
            sources[0].get("SeriesNumber") or 0) + 1000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="smaformer", manufacturer_model_name=model_name, software_versions=version,
        device_serial_number="none", series_description=f"smaformer {model_name} segmentation",
        omit_empty_frames=True)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path

"""What a series fetched from an archive must be before it is segmented (DICOMweb and DIMSE alike)."""
from __future__ import annotations

from smaformer.errors import InputError

#: modalities of series that hold no image to segment
NOT_IMAGES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "DOC", "REG", "FID", "OT"}


def check_image_series(instances: list, series: str) -> None:
    """Refuse, in one line, a fetched series with nothing to segment: no instance, a non-image modality (SEG,
    SR, RTSTRUCT...), no pixel data, or a localizer."""
    if not instances:
        raise InputError(f"series {series}", "the archive returned no instances")
    modality = str(getattr(instances[0], "Modality", ""))
    if modality in NOT_IMAGES or "PixelData" not in instances[0]:
        raise InputError(f"series {series}", f"not an image series (modality {modality or '?'}): nothing to segment")
    if any("LOCALIZER" in str(getattr(ds, "ImageType", "")) for ds in instances):
        raise InputError(f"series {series}", "a localizer series: nothing to segment")

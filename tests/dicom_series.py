"""A DICOM series writer for tests: real position/orientation tags, files named out of order."""
from __future__ import annotations

import numpy as np


def write_dicom_series(folder, volume: np.ndarray, spacing=(0.7, 0.8), thickness=2.5,
                       origin=(-100.0, -120.0, 30.0), orientation=(1, 0, 0, 0, 1, 0)) -> list:
    """Write (D,H,W) int16 as one DICOM file per slice with real position/orientation tags."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for z, plane in enumerate(volume):
        img = sitk.GetImageFromArray(plane.astype(np.int16))
        img.SetSpacing((spacing[0], spacing[1]))  # (x, y)
        normal = np.cross(orientation[:3], orientation[3:])
        pos = np.asarray(origin) + thickness * z * normal
        tags = {"0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": "1.2.3.4.5", "0020|0052": "1.2.3.4.6",
                "0010|0010": "Test^Patient", "0010|0020": "TEST001", "0008|0020": "20261204",
                "0020|0032": "\\".join(f"{p:.6f}" for p in pos), "0020|0037": "\\".join(str(v) for v in orientation),
                "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(thickness),
                "0020|0013": str(z + 1), "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"1.2.3.4.5.{z + 1}"}
        for k, v in tags.items():
            img.SetMetaData(k, v)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"slice{(z * 7) % len(volume):03d}.dcm"))  # names out of order
        w.Execute(img)
        files.append(folder / f"slice{(z * 7) % len(volume):03d}.dcm")
    return files

"""A DICOM SEG drawn over its series, headless: the picture in docs/DEPLOY.md.

Writes an ACDC validation volume as a DICOM MR series (one file per slice, real position/orientation tags,
stored as int16 with RescaleSlope 0.001 so the reader gets the [0, 1] values the model was trained on), runs
``smaformer predict --output-type dicom-seg`` on it, then draws the SEG's frames, found through each source
instance's SOP Instance UID (not through the NIfTI prediction), over the slices that hold the most foreground.

    python benchmarks/dicom_seg_demo.py -c runs/seg_demo_unet/latest.pt \
        --volume ../shared/data/acdc/volumes/patient002_frame01.h5 -o runs/dicom_seg_demo \
        --png docs/img/dicom_seg_overlay.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_series import write_dicom_series  # noqa: E402 - the tests' series writer, reused

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_mr_series(volume: np.ndarray, folder: Path) -> list[Path]:
    """(D, H, W) values in [0, 1] as an MR series whose readers get those values back."""
    import pydicom

    files = write_dicom_series(folder, np.round(volume * 1000), spacing=(1.5, 1.5), thickness=10.0)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept, ds.Modality = 0.001, 0, "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.SeriesDescription = "ACDC cine MR (demo series)"
        ds.save_as(f)
    return files


def render(series: list[Path], seg_path: Path, png: Path, slices: int = 3) -> list[str]:
    """Overlay the SEG's segments on the ``slices`` source images with the most foreground."""
    import highdicom as hd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom

    seg = hd.seg.segread(seg_path)
    numbers = seg.get_segment_numbers()
    names = [seg.get_segment_description(n).segment_label for n in numbers]
    sources = [pydicom.dcmread(f) for f in series]          # the writer returns them in position order
    frames = [seg.get_pixels_by_source_instance([ds.SOPInstanceUID], numbers, combine_segments=True, relabel=True,
                                                assert_missing_frames_are_empty=True)[0] for ds in sources]
    order = sorted(range(len(sources)), key=lambda z: -int((frames[z] > 0).sum()))[:slices]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 4.4))
    for ax, z in zip(np.atleast_1d(axes), sorted(order), strict=True):
        ax.imshow(sources[z].pixel_array * float(sources[z].RescaleSlope), cmap="gray")
        overlay = np.zeros((*frames[z].shape, 4))
        for j in range(1, len(numbers) + 1):
            overlay[frames[z] == j] = (*colours(j - 1)[:3], 0.45)
        ax.imshow(overlay)
        ax.set_title(f"instance {sources[z].InstanceNumber} ({sources[z].SOPInstanceUID})", fontsize=8)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(j)) for j in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=len(names))
    fig.suptitle(f"DICOM SEG {seg.SeriesDescription} over series {sources[0].SeriesInstanceUID}", fontsize=9)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return names


def main() -> int:
    from smaformer.infer.predict import predict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--volume", required=True, help="an ACDC .h5 volume (image in [0, 1])")
    p.add_argument("-o", "--out", required=True, help="work folder: series/ and seg.dcm")
    p.add_argument("--png", required=True)
    a = p.parse_args()
    out = Path(a.out)
    with h5py.File(a.volume, "r") as f:
        volume = np.asarray(f["image"], np.float32)
    files = write_mr_series(volume, out / "series")
    result = predict(out / "series", out / "seg.dcm", a.checkpoint, device="cpu", output_type="dicom-seg",
                     progress=False)
    if result[0].error:
        print(f"predict failed: {result[0].error}")
        return 1
    names = render(files, out / "seg.dcm", Path(a.png))
    print(f"{out / 'seg.dcm'}: segments {names}; picture {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What RTSTRUCT contours lose against the voxel labels they were drawn from (docs/INFERENCE.md).

Each ACDC validation volume is written as a DICOM MR series (``dicom_seg_demo.write_mr_series``), predicted as
NIfTI and as RTSTRUCT with the same checkpoint, and the RTSTRUCT's contours are rasterised back
(``infer.rtstruct.read_rtstruct_masks``). Dice per class of the rasterised contours against the NIfTI labels:
the loss of going through contours, nothing else.

    python benchmarks/rtstruct_loss.py -c runs/accuracy/acdc_unet16-cpu-reduced/train/latest.pt -o runs/rtstruct_loss
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_seg_demo import write_mr_series  # noqa: E402

DATA = Path(os.environ.get("SMAFORMER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "acdc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", required=True)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--volumes", type=int, default=20, help="ACDC val volumes to use (default all 20)")
    args = ap.parse_args()

    from smaformer.cli import main as cli
    from smaformer.data.io import read_image
    from smaformer.infer.dicom_seg import read_source_series
    from smaformer.infer.rtstruct import read_rtstruct_masks

    classes = {1: "RV", 2: "Myo", 3: "LV"}
    rows = []
    for vol in sorted((DATA / "volumes").glob("*.h5"))[: args.volumes]:
        series = args.out / vol.stem / "series"
        with h5py.File(vol, "r") as f:
            write_mr_series(np.asarray(f["image"]), series)
        nii, rt = args.out / vol.stem / "seg.nii.gz", args.out / vol.stem / "rt.dcm"
        for out, kind in ((nii, "nifti"), (rt, "dicom-rtstruct")):
            if cli(["predict", "-i", str(series), "-o", str(out), "-c", args.checkpoint, "--output-type", kind,
                    "--quiet"]) != 0:
                sys.exit(f"error: predict --output-type {kind} failed on {series}")
        labels, _ = read_image(nii, dtype=None)                      # (x, y, z) NIfTI -> our (z, y, x) reader order
        _, props = read_image(series, dtype=None)
        masks = read_rtstruct_masks(rt, read_source_series(series, props))
        for k, name in classes.items():
            ref = np.asarray(labels) == k
            if not ref.any():
                continue
            got = masks.get(name, np.zeros_like(ref))
            rows.append({"volume": vol.stem, "class": name, "voxels": int(ref.sum()),
                         "dice": float(2 * (got & ref).sum() / (got.sum() + ref.sum()))})
    summary = {c: {"mean_dice": float(np.mean(d)), "min_dice": float(np.min(d)), "cases": len(d)}
               for c in classes.values() if (d := [r["dice"] for r in rows if r["class"] == c])}
    result = {"checkpoint": args.checkpoint, "volumes": len({r["volume"] for r in rows}), "per_class": summary,
              "rows": rows}
    (args.out / "rtstruct_loss.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()

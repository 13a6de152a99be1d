"""What inference's input resize costs in Dice: torch bicubic (half-pixel, what ``infer_volume`` uses) against
the operator training resizes with (``data.transforms._cubic_matrix``, equal to ``scipy.ndimage.zoom(order=3)``
with aligned corners), on the same checkpoint and cases (issue 24).

Only the input resize changes: ``training_zoom`` replaces ``F.interpolate(mode="bicubic")`` inside volume
inference with the training operator; the logits are resized back bilinearly in both. It also reports how far
the two resized inputs lie apart (mean |diff| inside, max |diff| on the border rows/columns).

    python benchmarks/bench_resize.py runs/ens24/fold0/latest.pt --out runs/bench_resize
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared")) / "data" / "acdc"


def training_zoom(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B,C,H,W) batch zoomed to ``size`` with the training operator: ``A_h @ x @ A_w.T``."""
    from smaformer.data.transforms import _cubic_matrix

    ah = torch.from_numpy(_cubic_matrix(x.shape[-2], size[0]).toarray()).to(x)
    aw = torch.from_numpy(_cubic_matrix(x.shape[-1], size[1]).toarray()).to(x)
    return ah @ x @ aw.T


@contextlib.contextmanager
def input_resize(kind: str) -> Iterator[None]:
    """Within the block, volume inference resizes its inputs with ``kind`` ("bicubic" or "training")."""
    import smaformer.infer.volume as volume

    if kind == "bicubic":
        yield
        return

    def interpolate(x, size=None, mode="nearest", **kw):
        return training_zoom(x, tuple(size)) if mode == "bicubic" else F.interpolate(x, size=size, mode=mode, **kw)

    volume.F = SimpleNamespace(interpolate=interpolate)
    try:
        yield
    finally:
        volume.F = F


def input_difference(images: list[np.ndarray], size: tuple[int, int]) -> dict:
    """Mean |bicubic - training| inside (border pixel excluded) and max on the border, over (H,W) slices."""
    inner, edge = [], []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        d = (F.interpolate(x, size=size, mode="bicubic", align_corners=False) - training_zoom(x, size)).abs()[0, 0]
        inner.append(float(d[1:-1, 1:-1].mean()))
        edge.append(float(torch.cat([d[0], d[-1], d[:, 0], d[:, -1]]).max()))
    return {"slices": len(images), "mean_abs_inner": float(np.mean(inner)), "max_abs_border": float(np.max(edge))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_resize")
    args = ap.parse_args()

    from smaformer.checkpoint import load_checkpoint
    from smaformer.data import open_dataset
    from smaformer.infer.evaluate import evaluate
    from smaformer.runtime import cpu_description

    info = load_checkpoint(args.checkpoint)[1]
    size = tuple(int(s) for s in info["preprocessing"]["img_size"])
    reader = open_dataset(args.data, split=args.split)
    images = [z for c in reader.cases() for z in reader.load_case(c).image]
    res = {"machine": f"{cpu_description()}, {os.cpu_count()} cores", "load_1min": os.getloadavg()[0],
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "checkpoint": str(args.checkpoint),
           "data": f"{args.data} ({args.split})", "img_size": list(size),
           "input_difference": input_difference(images, size), "variants": {}}
    for kind in ("bicubic", "training"):
        t0 = time.perf_counter()
        with input_resize(kind):
            r = evaluate(args.checkpoint, reader, args.out / kind, postprocess="none", overlays=0, progress=False,
                         device="cpu")
        fg = r["foreground_mean"]["standard"]
        res["variants"][kind] = {"dice": fg["dice"], "hd95": fg["hd95"], "n_cases": r["data"]["n_cases"],
                                 "per_class_dice": {r["classes"][k]: v["standard"]["dice"]
                                                    for k, v in r["mean"].items()},
                                 "per_case_dice": [c["foreground_mean"]["standard"]["dice"]
                                                   for c in r["metric_per_case"]],
                                 "wall_s": round(time.perf_counter() - t0, 1)}
    a, b = (np.array(res["variants"][k]["per_case_dice"], dtype=float) for k in ("bicubic", "training"))
    res["training_minus_bicubic"] = {"mean_dice_points": 100 * float(np.nanmean(b) - np.nanmean(a)),
                                     "per_case_points_min_max": [100 * float(np.nanmin(b - a)),
                                                                 100 * float(np.nanmax(b - a))]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "variants"}, indent=1))
    for k, v in res["variants"].items():
        print(k, f"dice {v['dice']:.4f} hd95 {v['hd95']:.2f} per class {v['per_class_dice']} {v['wall_s']} s")


if __name__ == "__main__":
    main()

"""What the accuracy features buy on ACDC: plain, test-time mirroring, post-processing chosen on validation,
an ensemble of fold checkpoints, and all of them together, each scored on the 20 validation volumes, with
its time per volume. Also the cross-validation summary of the folds.

The folds come from ``smaformer train --config acdc_swin_unet --fold K`` (K = 0, 1, ...); their validation
cases are training patients (one volume per frame), so the post-processing each fold chose on its final
weights (``latest.pt``, which this script scores) never saw the 20 scored volumes.

    python benchmarks/bench_ensemble.py runs/ens/fold0 runs/ens/fold1 runs/ens/fold2 --out docs/accuracy/acdc_ensemble

"All combined" uses the first fold's post-processing choice: the folds may choose differently, and an
ensemble's own choice would need cross-validation predictions of the ensemble.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared")) / "data" / "acdc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folds", nargs="+", type=Path, help="fold run folders (latest.pt + validation/)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ensemble")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from smaformer.checkpoint import load_checkpoint
    from smaformer.infer.crossval import pool_cross_validation
    from smaformer.infer.evaluate import evaluate
    from smaformer.runtime import cpu_description

    ckpts = [f / "latest.pt" for f in args.folds]   # the final weights: their validation chose the post-processing
    rule = load_checkpoint(ckpts[0])[1].get("postprocessing")
    variants = {
        "plain": dict(checkpoint=ckpts[0], postprocess="none"),
        "tta": dict(checkpoint=ckpts[0], postprocess="none", tta=True),
        "post-processing": dict(checkpoint=ckpts[0], postprocess="auto"),
        f"ensemble of {len(ckpts)}": dict(checkpoint=ckpts, postprocess="none"),
        "all combined": dict(checkpoint=ckpts, postprocess=rule or "none", tta=True),
    }
    results = {"machine": f"{cpu_description()}, {os.cpu_count()} cores",
               "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "folds": [str(f) for f in args.folds],
               "post_processing_of_fold0": rule, "variants": {}}
    cv = pool_cross_validation(args.folds, args.out / "cross_validation")
    per_fold = [{"fold": f["fold"], "n_cases": f["n_cases"], "dice": f["foreground_mean"]["standard"]["dice"]}
                for f in cv["folds"]]
    results["cross_validation"] = {"n_cases": cv["n_cases"], "foreground_mean": cv["foreground_mean"],
                                   "per_fold": per_fold}
    for name, kw in variants.items():
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        res = evaluate(data=args.data, out_dir=args.out / name.replace(" ", "_"), split="val", overlays=0,
                       progress=False, device=args.device, **kw)
        wall = time.perf_counter() - t0
        fg, per = res["foreground_mean"]["standard"], res["metric_per_case"]
        results["variants"][name] = {
            "dice": fg["dice"], "hd95_voxels": fg["hd95"],
            "per_class_dice": {res["classes"][k]: v["standard"]["dice"] for k, v in res["mean"].items()},
            "seconds_per_volume": sum(c["seconds"] for c in per) / len(per), "wall_s": round(wall, 1),
            "n_cases": len(per), "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "postprocess": res["config"]["postprocessing_applied"]}
        print(f"{name:<18} Dice {100 * fg['dice']:.2f}  HD95 {fg['hd95']:.2f} vox  "
              f"{results['variants'][name]['seconds_per_volume']:.2f} s/volume", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.out / 'results.json'}")


if __name__ == "__main__":
    main()

"""Accuracy runs on real data: train a preset with ``smaformer train``, evaluate it with ``smaformer evaluate``,
and keep the small records (commands, resolved config, metrics.json, training log) under ``docs/accuracy/<run>/``.

The ``cpu-reduced`` budget is what fits in ~10-15 minutes of a shared 2-core CPU: a narrower model
(embed_dim 32 instead of 96, heads 1/2/4/8, window 8) at 128x128 for a fixed number of iterations, from
scratch (no ImageNet weights), no validation during training (the final weights are evaluated, so no model
selection touches the evaluated volumes). ``full`` is the preset's own recipe (for a GPU).

    python benchmarks/bench_accuracy.py acdc_swin_unet                  # cpu-reduced budget
    python benchmarks/bench_accuracy.py acdc_smaformer --budget full --device cuda
    python benchmarks/bench_accuracy.py --list
    python benchmarks/bench_accuracy.py acdc_swin_unet_scratch --teacher acdc_unet16 --set distill.hard=1 --suffix hard
    python benchmarks/bench_accuracy.py acdc_swin_unet_scratch --pretrain-iterations 2000 --suffix simmim
    python benchmarks/bench_accuracy.py --compare-labels runs/x/eval_fp32 runs/x/eval_bf16   # --save-nifti folders

``--compare-labels`` is the bf16 check of docs/DEPLOY.md: it compares the predicted labels of two
``smaformer evaluate --save-nifti`` folders voxel by voxel (differing voxels per foreground voxel of the
first) and their mean foreground Dice.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared")) / "data"
#: the narrower Swin, key by key (a preset's other model.kwargs, e.g. the scratch presets' drop_path_rate, stay)
_SMALL_SWIN = ["model.kwargs.embed_dim=32", "model.kwargs.num_heads=[1, 2, 4, 8]", "model.kwargs.window_size=8"]
_CPU = ["data.num_workers=1", "train.val_every=0", "train.tensorboard=false", "train.save_every_iters=200"]


def _small_swin(iterations: int) -> list[str]:
    """The cpu-reduced budget of the Swin-based models: 128x128, embed 32, batch 8, ``iterations`` steps."""
    return ["data.img_size=128", *_SMALL_SWIN, "train.batch_size=8",
            f"train.max_iterations={iterations}", *_CPU]


# run name -> (preset, data folder, evaluated split, {budget: overrides})
RUNS: dict[str, tuple[str, str, str, dict[str, list[str]]]] = {
    "acdc_swin_unet": ("acdc_swin_unet", "acdc", "val", {
        "full": [],
        "cpu-reduced": _small_swin(800)}),
    "acdc_smaformer": ("acdc_smaformer", "acdc", "val", {
        "full": [],
        "cpu-reduced": _small_swin(800)}),
    # the from-scratch recipe (configs/*_scratch.yaml): AdamW 2e-3 + warm-up + cosine instead of the official optimizer
    "acdc_swin_unet_scratch": ("acdc_swin_unet_scratch", "acdc", "val", {
        "full": [],
        "cpu-reduced": _small_swin(6000)}),
    "acdc_smaformer_scratch": ("acdc_smaformer_scratch", "acdc", "val", {
        "full": [],
        "cpu-reduced": _small_swin(6000)}),
    # the control: a CNN U-Net through the same recipe and pipeline (no pretraining either way)
    "acdc_unet": ("acdc_swin_unet", "acdc", "val", {
        "full": ["model.name=unet", "name=acdc_unet"],
        "cpu-reduced": ["model.name=unet", "name=acdc_unet", "data.img_size=128", "train.batch_size=8",
                        "train.max_iterations=1800", *_CPU]}),
    # a narrower U-Net (base 16: 1.94M params, a quarter of the FLOPs): the CPU-affordable control and teacher
    "acdc_unet16": ("acdc_swin_unet", "acdc", "val", {
        "full": ["model.name=unet", "name=acdc_unet16", "model.kwargs={base: 16}"],
        "cpu-reduced": ["model.name=unet", "name=acdc_unet16", "model.kwargs={base: 16}", "data.img_size=128",
                        "train.batch_size=8", "train.max_iterations=1800", *_CPU]}),
    "drive_medt": ("medt_drive", "drive", "test", {
        "full": [],
        "cpu-reduced": ["data.img_size=128", "train.max_iterations=100", "train.freeze_gates_epochs=2", *_CPU]}),
    "drive_unet": ("medt_drive", "drive", "test", {
        "full": ["model.name=unet", "name=unet_drive"],
        "cpu-reduced": ["model.name=unet", "name=unet_drive", "data.img_size=128", "train.max_iterations=100",
                        "train.freeze_gates_epochs=0", *_CPU]}),
    # the same U-Net on 128x128 crops at native resolution: it predicts with a sliding window
    "drive_unet_crop": ("medt_drive", "drive", "test", {
        "full": ["model.name=unet", "name=unet_drive_crop", "data.patches=crop"],
        "cpu-reduced": ["model.name=unet", "name=unet_drive_crop", "data.patches=crop", "data.img_size=128",
                        "train.max_iterations=100", "train.freeze_gates_epochs=0", *_CPU]}),
}


def machine() -> str:
    """CPU model name and core count, e.g. 'AMD EPYC, 2 cores'."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd`` with stdout/stderr to ``log``; wall seconds and load averages around it. Raises on failure."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"command": shlex.join(cmd), "wall_s": round(time.perf_counter() - t0, 1),
            "load_1min_start": round(load0, 2), "load_1min_end": round(os.getloadavg()[0], 2)}


def fov_metrics(checkpoint: Path, root: Path, split: str, inference: str | None = None) -> dict:
    """Binary vessel metrics inside each image's field of view (DRIVE protocol): per-image Dice (= F1), IoU,
    sensitivity, specificity, accuracy and their means, plus F1 pooled over all FOV pixels. ``inference``:
    resize or sliding (default: what the checkpoint's training implies)."""
    import numpy as np

    from smaformer import load_checkpoint
    from smaformer.data import open_dataset
    from smaformer.infer.volume import infer_volume

    model, info = load_checkpoint(checkpoint)
    data = open_dataset(root, split=split)
    cases, pooled = [], np.zeros(3)
    for case in data.cases():
        sample = data.load_case(case)
        pred = infer_volume(model, sample.image[None], info["preprocessing"], inference=inference)[0] == 1
        fov = sample.meta.get("fov")
        fov = np.ones(pred.shape, bool) if fov is None else np.asarray(fov, bool)
        p, r = pred[fov], np.asarray(sample.label)[fov] == 1
        tp, fp, fn, tn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum(), (~p & ~r).sum()
        pooled += (tp, fp, fn)
        cases.append({"case": case, "dice_f1": 2 * tp / max(2 * tp + fp + fn, 1), "iou": tp / max(tp + fp + fn, 1),
                      "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
                      "accuracy": (tp + tn) / p.size})
    keys = [k for k in cases[0] if k != "case"]
    tp, fp, fn = pooled
    return {"split": split, "n_images": len(cases), "region": "field of view",
            "inference": inference or info["preprocessing"].get("inference", "resize"),
            "mean": {k: float(np.mean([c[k] for c in cases])) for k in keys},
            "pooled_f1": float(2 * tp / max(2 * tp + fp + fn, 1)),
            "cases": [{k: (v if k == "case" else float(v)) for k, v in c.items()} for c in cases]}


def run(name: str, budget: str, runs_dir: Path, docs_dir: Path, device: str, threads: int,
        iterations: int | None = None, *, teacher: str | None = None, pretrain_iterations: int | None = None,
        extra: tuple[str, ...] = (), suffix: str = "") -> Path:
    """Train + evaluate one run (``iterations`` overrides the budget's cap); returns its docs folder.

    The chain of issue 29: ``teacher`` (a run name, trained first unless its weights are in ``runs_dir``, or
    a checkpoint path) is distilled from; ``pretrain_iterations`` first runs ``smaformer pretrain`` (SimMIM)
    with the run's own model and data settings and starts the student from its encoder; ``extra`` are more
    ``--set`` overrides (e.g. distill.hard=1); ``suffix`` names the variant's folders."""
    preset, data, split, budgets = RUNS[name]
    tag = f"{name}-{budget}" + (f"-{iterations}it" if iterations else "") + (f"-{suffix}" if suffix else "")
    out, docs = runs_dir / tag, docs_dir / tag
    teacher_ckpt = None
    if teacher in RUNS:
        teacher_ckpt = runs_dir / f"{teacher}-{budget}" / "train" / "latest.pt"
        if not teacher_ckpt.is_file():
            run(teacher, budget, runs_dir, docs_dir, device, threads)
    elif teacher:
        teacher_ckpt = Path(teacher).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    docs.mkdir(parents=True, exist_ok=True)
    sets = [f"data.root={DATA / data}", f"train.device={device}", *budgets[budget]]
    sets += [f"train.max_iterations={iterations}"] if iterations else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    exe = [sys.executable, "-m", "smaformer"]
    record = {"run": name, "budget": budget, "machine": machine(), "threads": threads, "device": device,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "pretrained": None}
    if pretrain_iterations:
        pre_cmd = exe + ["pretrain", "--config", preset, "--out", str(out / "pretrain"), "--no-progress"]
        pre_cmd += [a for s in [*sets, *extra, f"train.max_iterations={pretrain_iterations}"] for a in ("--set", s)]
        record["pretrain"] = timed(pre_cmd, env, out / "pretrain.log")
        record["pretrained"] = "SimMIM on the training split's images (this run's pretrain step)"
        sets.append(f"model.pretrained={out / 'pretrain' / 'latest.pt'}")
        shutil.copyfile(out / "pretrain" / "pretrain_log.csv", docs / "pretrain_log.csv")
    train_cmd = exe + ["train", "--config", preset, "--out", str(out / "train"), "--no-progress"]
    train_cmd += [a for s in [*sets, *extra] for a in ("--set", s)]
    if teacher_ckpt is not None:
        train_cmd += ["--teacher", str(teacher_ckpt)]
        record["teacher"] = {"given": teacher, "checkpoint": str(teacher_ckpt)}
    record["train"] = timed(train_cmd, env, out / "train.log")
    eval_cmd = exe + ["evaluate", "-c", str(out / "train" / "latest.pt"), "-d", str(DATA / data), "-o",
                      str(out / "eval"), "--split", split, "--overlays", "0", "--no-progress", "--device", device,
                      "--postprocess", "none"]   # training chose it on the validation cases: not scored here
    record["evaluate"] = timed(eval_cmd, env, out / "eval.log")
    if data == "drive":  # evaluate reports whole-image metrics; DRIVE is scored inside the field of view
        fov = {}
        for mode in ("resize", "sliding"):     # both inference modes, whatever the training implies
            t0 = time.perf_counter()
            fov[mode] = fov_metrics(out / "train" / "latest.pt", DATA / data, split, inference=mode)
            record[f"fov_metrics_{mode}_s"] = round(time.perf_counter() - t0, 1)
        (docs / "metrics_fov.json").write_text(json.dumps(fov, indent=1) + "\n", encoding="utf-8")
    for src, dst in ((out / "train" / "config.yaml", "config.yaml"), (out / "train" / "train_log.csv", "train_log.csv"),
                     (out / "eval" / "metrics.json", "metrics.json")):
        if src.exists():
            shutil.copyfile(src, docs / dst)
    (docs / "run.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return docs


def compare_labels(first: Path, second: Path) -> dict:
    """Voxels whose label differs between two evaluate folders (per case and in all), per foreground voxel of
    ``first``, and the mean foreground Dice (standard convention) of each."""
    import nibabel as nib
    import numpy as np

    cases, total_diff, total_fg = {}, 0, 0
    for path in sorted((first / "predictions").glob("*.nii.gz")):
        a = np.asarray(nib.load(path).dataobj)
        b = np.asarray(nib.load(second / "predictions" / path.name).dataobj)
        diff, fg = int((a != b).sum()), int((a > 0).sum())
        cases[path.name.removesuffix(".nii.gz")] = {"differing_voxels": diff, "foreground_voxels": fg}
        total_diff, total_fg = total_diff + diff, total_fg + fg
    worst = max(cases.items(), key=lambda kv: kv[1]["differing_voxels"] / max(kv[1]["foreground_voxels"], 1))
    dice = [json.loads((d / "metrics.json").read_text("utf-8"))["foreground_mean"]["standard"]["dice"]
            for d in (first, second)]
    return {"cases": len(cases), "differing_voxels": total_diff, "foreground_voxels": total_fg,
            "differing_per_foreground": total_diff / max(total_fg, 1),
            "worst_case": worst,
            "mean_dice": dice, "dice_change_points": 100 * (dice[1] - dice[0]), "per_case": cases}


def table(docs_dir: Path, tags: list[str]) -> str:
    """Markdown rows (record, iterations, mean and per-class Dice, training wall time, machine, date) from the
    kept records ``docs_dir/<tag>/{metrics,run,config}``: the figures of docs/BENCHMARKS.md come from here."""
    import yaml

    rows = ["| record | iterations | mean Dice | per class | train wall | machine, date (UTC) |",
            "|---|---|---|---|---|---|"]
    for tag in tags:
        d = docs_dir / tag
        m = json.loads((d / "metrics.json").read_text("utf-8"))
        run = json.loads((d / "run.json").read_text("utf-8"))
        cfg = yaml.safe_load((d / "config.yaml").read_text("utf-8"))
        names = m["classes"]
        per = " / ".join(f"{names[k]} {100 * v['standard']['dice']:.1f}" for k, v in m["mean"].items())
        rows.append(f"| [{tag}](accuracy/{tag}) | {cfg['train']['max_iterations']} | "
                    f"{100 * m['foreground_mean']['standard']['dice']:.2f} | {per} | {run['train']['wall_s']:.0f} s | "
                    f"{run['machine']}, {run['date_utc']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help=f"runs to do, one after the other: {', '.join(RUNS)}")
    ap.add_argument("--budget", choices=("cpu-reduced", "full"), default="cpu-reduced")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "accuracy", help="weights and logs (not kept)")
    ap.add_argument("--docs-dir", type=Path, default=REPO / "docs" / "accuracy", help="small records (kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is faster than 2 when other jobs share the cores)")
    ap.add_argument("--iterations", type=int, help="override the budget's iteration cap (run folder gets -<N>it)")
    ap.add_argument("--teacher", metavar="RUN|CKPT", help="distil from this run (trained first unless its weights "
                    "are in --runs-dir) or checkpoint")
    ap.add_argument("--pretrain-iterations", type=int, metavar="N", help="SimMIM-pretrain the encoder for N steps "
                    "first (smaformer pretrain on the training split), then train from it")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="more overrides for pretrain and train, e.g. distill.hard=1")
    ap.add_argument("--suffix", default="", help="names this variant's folders: <run>-<budget>[-<N>it]-<suffix>")
    ap.add_argument("--list", action="store_true", help="print the runs and their overrides")
    ap.add_argument("--table", nargs="+", metavar="RECORD", help="print markdown rows of these kept records, then stop")
    ap.add_argument("--compare-labels", nargs=2, type=Path, metavar=("EVAL_A", "EVAL_B"),
                    help="compare the labels and mean Dice of two 'evaluate --save-nifti' folders, then stop")
    args = ap.parse_args()
    if args.table:
        print(table(args.docs_dir, args.table))
        return
    if args.compare_labels:
        result = compare_labels(*args.compare_labels)
        print(json.dumps({k: v for k, v in result.items() if k != "per_case"}, indent=1))
        return
    if args.list or not args.runs:
        for name, (preset, data, split, budgets) in RUNS.items():
            print(f"{name}: preset {preset}, data {data}, evaluated on {split}; {args.budget}: "
                  f"{' '.join(budgets[args.budget]) or '(preset as is)'}")
        return
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        ap.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    for name in args.runs:
        docs = run(name, args.budget, args.runs_dir, args.docs_dir, args.device, args.threads, args.iterations,
                   teacher=args.teacher, pretrain_iterations=args.pretrain_iterations, extra=tuple(args.extra),
                   suffix=args.suffix)
        print(f"{name}: done -> {docs}", flush=True)


if __name__ == "__main__":
    main()

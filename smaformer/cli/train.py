"""``smaformer train``: train from a YAML preset with ``--set`` overrides, resume a run, or dry-run a config."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from smaformer.config import list_presets, load_config
from smaformer.errors import InputError

EPILOG = """examples:
  smaformer train --config acdc_swin_unet --set data.root=../shared/data/acdc --set train.epochs=50
  smaformer train --config synapse_smaformer --set train.batch_size=12 --set "loss.class_weights=[1,2,2,2,1,2,1,1,1]"
  smaformer train --config acdc_smaformer --dry-run          # build model and data, print the plan, train nothing
  smaformer train --config acdc_swin_unet --fold 0 --dry-run   # 5-fold cross-validation: fold 0 validates
  smaformer train --config acdc_swin_unet --fold 2 --folds 10 --set train.seed=7
  smaformer train --config acdc_swin_unet --fold 0 --splits runs/acdc_swin_unet-20250101-120000/splits.json
  smaformer train --resume runs/acdc_swin_unet-20250101-120000
  smaformer train --config acdc_swin_unet_scratch --teacher runs/acdc_unet/latest.pt --set distill.hard=1 \
      --set distill.soft=0        # learn from a U-Net teacher too (distill.*: weight, temperature, ramp_iters)
  torchrun --standalone --nproc_per_node=2 -m smaformer train --config acdc_swin_unet

presets: """


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG + ", ".join(list_presets())
    p.add_argument("--config", "-c", help="preset name (see below) or path to a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. train.epochs=20, optim.lr=1e-3, data.img_size=[256,256]")
    p.add_argument("--fold", type=int, metavar="K", help="cross-validation: train on the other folds of the "
                   "training split, validate on fold K (sets data.fold; folds grouped by patient, from train.seed)")
    p.add_argument("--folds", type=int, metavar="N", help="number of folds (data.folds, default 5)")
    p.add_argument("--splits", metavar="FILE", help="take the folds from this splits.json (nnU-Net "
                   "splits_final.json shape; sets data.splits_file)")
    p.add_argument("--teacher", nargs="+", metavar="CKPT", help="distil from these smaformer checkpoints "
                   "(several: their softmax averaged); sets distill.teachers, tuned by the distill.* entries")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where latest.pt left it")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: <train.out_dir>/<name>-<timestamp>)")
    p.add_argument("--dry-run", action="store_true", help="build the model and the data, print the plan, stop")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="save latest.pt and stop once the run has made N optimizer steps in total")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from smaformer.train import describe, train, trainer_session

    folds = {k: v for k, v in (("fold", args.fold), ("folds", args.folds), ("splits_file", args.splits))
             if v is not None}
    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(None, f"--stop-after {args.stop_after}: give a number of optimizer steps >= 1")
    base = {"data": folds} if folds else {}
    if args.teacher:
        base["distill"] = {"teachers": [str(Path(t).resolve()) for t in args.teacher]}
    if args.resume:
        if args.config or args.overrides or base:
            raise InputError(args.resume, "--resume continues a run with its stored config; "
                                          "drop --config/--set/--fold/--folds/--splits/--teacher")
        cfg = None
    elif not args.config:
        raise InputError(None, "give --config PRESET (or --resume RUN_DIR); presets: " + ", ".join(list_presets()))
    else:
        cfg = load_config(args.config, args.overrides, base=base or None)
    if args.dry_run:
        with trainer_session(cfg, run_dir=args.out, resume=args.resume, progress_bar=False) as trainer:
            print(describe(trainer))
        return 0
    result = train(cfg, run_dir=args.out, resume=args.resume, stop_after=args.stop_after,
                   progress_bar=not args.no_progress)
    best = "n/a (no validation)" if result.best_dice < 0 else f"{result.best_dice:.4f}"
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {result.iterations} iterations, {result.epochs} epochs, best val Dice {best} ({result.stopped})")
    return 128 + result.signal if result.signal else 0     # 130 after Ctrl-C, 143 after SIGTERM, as shells do

"""``smaformer pretrain``: SimMIM self-pretraining of a Swin encoder on your own images (no labels)."""
from __future__ import annotations

import argparse
from pathlib import Path

from smaformer.config import load_config
from smaformer.errors import InputError

EPILOG = """examples:
  smaformer pretrain --config acdc_swin_unet_scratch --out runs/acdc_simmim --set train.max_iterations=3000
  smaformer pretrain --config acdc_smaformer_scratch --images my_unlabelled_scans/ --out runs/mri_simmim
  smaformer pretrain --resume runs/acdc_simmim
  smaformer train --config acdc_swin_unet_scratch --set model.pretrained=runs/acdc_simmim/latest.pt

The images are the config's training split (its validation and test cases are never opened) or --images,
a folder of NIfTI/DICOM/PNG/TIFF/h5 scans. latest.pt holds the encoder in the Swin-T layout that
model.pretrained loads (with its coverage report) into Swin-Unet or SMAFormer of the same size.
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("--config", "-c", help="preset name or YAML file (its model, data and optim sections are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. pretrain.mask_ratio=0.6, train.max_iterations=2000")
    p.add_argument("--images", metavar="PATH", help="pretrain on these unlabelled scans (sets pretrain.images)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: <train.out_dir>/<name>-simmim-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the pretraining run in RUN_DIR")
    p.add_argument("--stop-after", type=int, metavar="N", help="save latest.pt and stop after N steps in total")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from smaformer.train.pretrain import pretrain

    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(None, f"--stop-after {args.stop_after}: give a number of steps >= 1")
    if args.resume:
        if args.config or args.overrides or args.images:
            raise InputError(args.resume, "--resume continues a run with its stored config; "
                                          "drop --config/--set/--images")
        cfg = None
    elif not args.config:
        raise InputError(None, "give --config PRESET (or --resume RUN_DIR)")
    else:
        base = {"pretrain": {"images": str(Path(args.images).resolve())}} if args.images else None
        cfg = load_config(args.config, args.overrides, base=base)
    result = pretrain(cfg, run_dir=args.out, resume=args.resume, stop_after=args.stop_after,
                      progress_bar=not args.no_progress)
    print(f"done: {result.iterations} iterations, reconstruction L1 {result.loss:.4f} ({result.stopped})")
    return 0

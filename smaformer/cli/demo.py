"""``smaformer demo``: train a small model on synthetic phantoms and evaluate it, in a few minutes on a CPU."""
from __future__ import annotations

import argparse

from smaformer.tools.demo import SMALL, run_demo

EPILOG = """examples:
  smaformer demo                          # about 2.5 minutes on 2 CPU cores, writes ./runs/demo-<timestamp>
  smaformer demo --minutes 1 --out /tmp/demo
  smaformer demo --iterations 30 --test-volumes 1   # a quick smoke run"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("--out", metavar="DIR", help="run folder (default ./runs/demo-<timestamp>)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time budget (default 2.5)")
    p.add_argument("--iterations", type=int, help="train exactly this many steps instead of a time budget")
    p.add_argument("--model", choices=sorted(SMALL), default="swin_unet",
                   help="small variant to train (default swin_unet: the small SMAFormer learns these phantoms "
                        "far more slowly and needs a longer budget)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: 1 or 2, whichever trains faster here; on a busy machine "
                        "OpenMP threads can slow tiny models down several times)")
    p.add_argument("--test-volumes", type=int, default=4, help="held-out phantom volumes to evaluate (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, args.minutes, args.iterations, args.model, args.threads, args.test_volumes, args.seed,
             progress=not args.no_progress)
    return 0

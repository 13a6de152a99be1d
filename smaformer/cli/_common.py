"""Arguments several sub-commands share, declared once so that they mean the same everywhere."""
from __future__ import annotations

import argparse

from smaformer.runtime import PRECISIONS


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision`` and ``--batch-size`` of the commands that run a model on volumes."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="fp32",
                   help="autocast dtype for the torch engine (default fp32; auto: bf16/fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")

"""``smaformer export``: checkpoint -> ONNX / TorchScript / safetensors, with a parity check."""
from __future__ import annotations

import argparse

from smaformer.export import TOLERANCE, export_checkpoint

EPILOG = f"""examples:
  smaformer export --format onnx -c runs/exp/best.pt -o model.onnx
  smaformer export --format torchscript -c runs/exp/best.pt -o model.ts
  smaformer export --format safetensors -c runs/exp/best.pt -o model.safetensors   # + model.json sidecar

After export both the eager model and the exported file run on the same inputs; the max abs difference
is printed and the command fails above {TOLERANCE:g}. Batch (and H/W where the model allows it) are dynamic
only when verified; otherwise they are reported as fixed.
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("--format", "-f", required=True, choices=("onnx", "torchscript", "safetensors"))
    p.add_argument("-c", "--checkpoint", required=True, help="a .pt checkpoint or a .safetensors + .json pair")
    p.add_argument("-o", "--output", required=True, help="file to write")


def run(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.checkpoint, args.output, args.format)
    print(result.summary())
    return 0

"""``smaformer export``: checkpoint -> ONNX (fp32/fp16) / OpenVINO IR (fp32/INT8) / TorchScript / safetensors,
with a parity check (INT8: an accuracy guard)."""
from __future__ import annotations

import argparse

from smaformer.errors import InputError
from smaformer.export import TOLERANCE, export_checkpoint

EPILOG = f"""examples:
  smaformer export --format onnx -c runs/exp/best.pt -o model.onnx
  smaformer export --format torchscript -c runs/exp/best.pt -o model.ts
  smaformer export --format safetensors -c runs/exp/best.pt -o model.safetensors   # + model.json sidecar
  smaformer export --format openvino -c runs/exp/best.pt -o model.xml              # + model.bin
  smaformer export --format openvino -c runs/exp/best.pt -o model_int8.xml --int8 --calibration data/acdc
  smaformer export --format openvino -c best.pt -o m.xml --int8 --calibration data/acdc --guard-split test
  smaformer export --format onnx --fp16 -c runs/exp/best.pt -o model_fp16.onnx      # for TensorRT / GPUs

After export both the eager model and the exported file run on the same inputs; the max abs difference
is printed and the command fails above {TOLERANCE:g}. Batch (and H/W where the model allows it) are dynamic
only when verified; otherwise they are reported as fixed. --int8 calibrates with NNCF on slices prepared as
`predict` prepares them and scores fp32 and INT8 on volumes the checkpoint never trained on: its own
validation volumes (its val split, fold or val_cases) in DATA, or --guard-split of --guard-data; a guard
patient the checkpoint trained on is refused. It writes nothing when INT8 loses more than --max-dice-drop
points of mean foreground Dice. --fp16 checks
logits within a stated tolerance and labels agreeing on >= 99.9% of the voxels of the check input.
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("--format", "-f", required=True, choices=("onnx", "openvino", "torchscript", "safetensors"))
    p.add_argument("-c", "--checkpoint", required=True, help="a .pt checkpoint or a .safetensors + .json pair")
    p.add_argument("-o", "--output", required=True, help="file to write")
    q = p.add_argument_group("INT8 OpenVINO IR (--format openvino)")
    q.add_argument("--int8", action="store_true", help="quantize with NNCF after training, behind an accuracy guard")
    q.add_argument("--calibration", metavar="DATA", help="dataset folder to calibrate on and to guard with")
    q.add_argument("--calibration-split", default="train", help="split of DATA that calibrates (default: train; "
                   "never a guard patient)")
    q.add_argument("--calibration-cases", type=int, default=8, metavar="N", help="volumes that calibrate (default 8)")
    q.add_argument("--guard-cases", type=int, default=20, metavar="N",
                   help="guard volumes to score (default 20, or those there are)")
    q.add_argument("--guard-split", metavar="SPLIT", help="guard on this split instead of the checkpoint's own "
                   "validation volumes (refused if it holds a patient the checkpoint trained on)")
    q.add_argument("--guard-data", metavar="DATA", help="dataset folder of --guard-split (default: --calibration)")
    q.add_argument("--max-dice-drop", type=float, default=0.5, metavar="POINTS",
                   help="refuse when INT8 loses more points of mean foreground Dice than this (default 0.5)")
    q.add_argument("--int8-scheme", choices=("auto", "transformer", "cnn"), default="auto",
                   help="NNCF's transformer scheme (MatMul/Linear only) or CNN scheme (every quantizable op; faster, "
                        "riskier); auto: CNN for the U-Net, transformer for the others")
    q.add_argument("--layout", help="dataset layout of DATA (default: detected)")
    p.add_argument("--fp16", action="store_true", help="--format onnx: a half-precision graph (fp32 inputs/outputs)")


def run(args: argparse.Namespace) -> int:
    quantize = None
    if args.int8:
        from smaformer.infer.quantize import Int8Quantizer, Int8Spec

        if not args.calibration:
            raise InputError(args.output, "--int8 needs --calibration DATA (the dataset to calibrate on)")
        quantize = Int8Quantizer(Int8Spec(args.calibration, args.calibration_split, args.calibration_cases,
                                          args.guard_cases, args.max_dice_drop, args.layout, scheme=args.int8_scheme,
                                          guard_split=args.guard_split, guard_data=args.guard_data))
    elif args.calibration or args.guard_split or args.guard_data:
        raise InputError(args.calibration or args.guard_data, "--calibration/--guard-* apply with --int8")
    result = export_checkpoint(args.checkpoint, args.output, args.format, quantize=quantize, fp16=args.fp16)
    print(result.summary())
    return 0

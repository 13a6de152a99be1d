"""Arguments several sub-commands share, declared once so that they mean the same everywhere."""
from __future__ import annotations

import argparse

from smaformer.errors import InputError
from smaformer.infer.members import ENGINES
from smaformer.infer.volume import INFERENCE_MODES
from smaformer.runtime import PRECISIONS


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision`` and ``--batch-size`` of the commands that run a model on volumes."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--precision", choices=("auto", *PRECISIONS), default="fp32",
                   help="autocast dtype for the torch engine (default fp32; auto: bf16/fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the torch models (pays off on long runs on a GPU; on failure: eager)")


def add_parts_args(p: argparse.ArgumentParser) -> None:
    """``--num-parts N --part-id K``: this process handles cases K, K+N, K+2N, ... (``infer.parts``)."""
    p.add_argument("--num-parts", type=int, metavar="N",
                   help="split the cases into N parts dealt round-robin, for N independent jobs (default 1; under "
                        "torchrun the ranks are the parts)")
    p.add_argument("--part-id", type=int, metavar="K", help="which part this process handles, 0..N-1 (default 0)")


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``-c`` (one checkpoint or an ensemble), ``--engine``, ``--tta``, ``--inference``, ``--postprocess``."""
    p.add_argument("-c", "--checkpoint", required=required, nargs="+", metavar="CHECKPOINT",
                   help=".pt checkpoint, .safetensors (+ .json) or .onnx; several: an ensemble averaging their "
                        "softmax (same classes; each with its own preprocessing)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: onnxruntime for .onnx files, torch otherwise")
    p.add_argument("--tta", action="store_true",
                   help="test-time mirroring: average the probabilities over the flips of each slice (H, W, both)")
    p.add_argument("--inference", choices=INFERENCE_MODES,
                   help="resize: each slice to the model size; sliding: model-sized windows at the image's own "
                        "resolution (overlap 0.5, Gaussian blending). Default: what the checkpoint's training "
                        "implies (resize unless it trained on native-resolution crops)")
    p.add_argument("--postprocess", nargs="+", metavar=("auto|none|lcc|min-size", "N"),
                   help="3D post-processing: auto (default: the per-class choice stored in the checkpoint, made on "
                        "validation), none, lcc (largest component per class) or 'min-size N' (drop smaller)")


def parse_postprocess(values: list[str] | None) -> tuple[str, int]:
    """``(mode, min_size)`` of ``--postprocess``: ``auto``, ``none``, ``lcc`` or ``min_size`` with N voxels."""
    if not values:
        return "auto", 0
    mode = values[0].replace("-", "_")
    if mode in ("auto", "none", "lcc") and len(values) == 1:
        return mode, 0
    if mode == "min_size" and len(values) == 2 and values[1].isdigit() and int(values[1]) > 0:
        return "min_size", int(values[1])
    raise InputError(None, "--postprocess takes auto, none, lcc or 'min-size N' with N a positive voxel count")

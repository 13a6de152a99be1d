"""Thin argparse front end: one module per sub-command in this package, each exposing only
``configure_parser(parser)`` (arguments, with an example in the epilog) and ``run(args) -> int``, which
parses arguments and calls the API (``smaformer.train``, ``infer``, ``export``, ``tools``). Errors print
as one line unless ``--debug``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from smaformer.errors import SmaformerError

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("smaformer.cli.demo", "train a small model on synthetic phantoms and evaluate it"),
    "train": ("smaformer.cli.train", "train a model from a YAML preset"),
    "pretrain": ("smaformer.cli.pretrain", "self-pretrain a Swin encoder on unlabelled images (SimMIM)"),
    "evaluate": ("smaformer.cli.evaluate", "evaluate a checkpoint on 3D volumes (Dice/HD95)"),
    "predict": ("smaformer.cli.predict", "segment NIfTI/DICOM/PNG inputs, keeping their geometry"),
    "export": ("smaformer.cli.export", "export a checkpoint to ONNX, TorchScript or safetensors"),
    "info": ("smaformer.cli.info", "params per part, FLOPs and architecture of a model or checkpoint"),
    "convert": ("smaformer.cli.convert", "convert NIfTI pairs / nnU-Net raw data into the Synapse layout"),
    "check-data": ("smaformer.cli.check_data", "detect a dataset layout and check it for faults"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smaformer",
        description="Transformer segmentation for 2D medical images: SMAFormer, Swin-Unet, MedT, HBFormer, "
                    "TransUNet.",
        epilog="Example: smaformer info swin_unet",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def _tolerant_streams() -> None:
    """Under an ASCII locale, print units such as "mm²" as escapes instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv        # accepted anywhere: before or after the sub-command
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except SmaformerError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

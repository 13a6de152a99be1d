"""``smaformer info``: parameters per part, FLOPs, pretrained coverage and the architecture page of a model
or a checkpoint."""
from __future__ import annotations

import argparse

from smaformer.config import apply_override
from smaformer.tools.info import count_flops, format_info, pretrained_coverage, resolve

EPILOG = """examples:
  smaformer info swin_unet
  smaformer info smaformer --img-size 256 --html smaformer_arch.html
  smaformer info runs/exp/best.pt
  smaformer info swin_unet --pretrained swin_tiny_patch4_window7_224.pth
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("target", metavar="MODEL|CHECKPOINT", help="a registered model name or a checkpoint file")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="input size H [W] (default: configured)")
    p.add_argument("--num-classes", type=int, help="classes (model names only)")
    p.add_argument("--in-chans", type=int, help="input channels (model names only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a further model constructor argument, e.g. --set resize_to=224 (model names only)")
    p.add_argument("--tiny", action="store_true", help="use the model's tiny test variant")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it runs one forward pass)")
    p.add_argument("--pretrained", metavar="PATH", help="load ImageNet Swin-T weights and print the coverage")
    p.add_argument("--html", metavar="FILE", help="write a self-contained architecture page")


def run(args: argparse.Namespace) -> int:
    img_size = None if not args.img_size else args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    model_args: dict = {}
    for item in args.set:
        apply_override(model_args, item)
    model, meta = resolve(args.target, tiny=args.tiny, img_size=img_size, num_classes=args.num_classes,
                          in_chans=args.in_chans, model_args=model_args)
    flops = None if args.no_flops else count_flops(model, meta.input_shape)
    print(format_info(model, meta, flops))
    if args.pretrained:
        print("\npretrained coverage\n" + pretrained_coverage(model, args.pretrained))
    if args.html:
        from smaformer.tools.archpage import write_arch_page

        title = " ".join([meta.name, *(f"{k}={v}" for k, v in meta.kwargs.items())])
        out = write_arch_page(model, meta.input_shape, args.html, title=title, flops=flops)
        print(f"\narchitecture page written to {out}")
    return 0

"""CPU speed and peak memory of the MedT family at a given size (default 256x256).

Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; the row
reports the peak minus the memory held after building the model. Times are medians over ``--repeats`` runs
after one warm-up. Prints markdown rows for docs/bench/medt.md.

    python benchmarks/bench_medt.py --size 256 --threads 2
    python benchmarks/bench_medt.py --models medt --size 128 256 --batch 1 4 --modes eval train
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

NAMES = ("axial_unet", "gated_axial_unet", "logo", "medt")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_one(name: str, size: int, batch: int, mode: str, repeats: int, threads: int) -> dict:
    """Time one configuration in this process; returns seconds per step and peak memory in MiB."""
    import torch
    from bench_models import median_time  # benchmarks/ is on sys.path when this file runs as a script

    from smaformer.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, img_size=size, num_classes=2, in_chans=3)
    model.train(mode == "train")
    x = torch.randn(batch, 3, size, size)
    base = _rss_mb()

    def step() -> None:
        if mode == "train":
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        else:
            with torch.inference_mode():
                model(x)

    return {"model": name, "size": size, "batch": batch, "mode": mode, "threads": threads,
            "params": sum(p.numel() for p in model.parameters()), "s_per_step": median_time(step, repeats),
            "peak_mb": _rss_mb() - base}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(NAMES), choices=NAMES)
    ap.add_argument("--size", nargs="+", type=int, default=[256])
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.models[0], args.size[0], args.batch[0], args.modes[0], args.repeats,
                                 args.threads)))
        return 0
    print(f"<!-- {platform.processor() or platform.machine()}, python {platform.python_version()} -->")
    print("| model | size | batch | mode | threads | params | s/step | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for size in args.size:
            for batch in args.batch:
                for mode in args.modes:
                    cmd = [sys.executable, __file__, "--one", "--models", name, "--size", str(size), "--batch",
                           str(batch), "--modes", mode, "--repeats", str(args.repeats), "--threads",
                           str(args.threads)]
                    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                    print(f"| {name} | {size} | {batch} | {mode} | {args.threads} | {r['params']:,} | "
                          f"{r['s_per_step']:.2f} | {r['peak_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

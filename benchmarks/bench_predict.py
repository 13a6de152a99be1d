"""Prediction throughput and memory (rows for docs/bench/predict.md).

  python benchmarks/bench_predict.py speed --models unet swin_unet --seconds 10
      slices/s on CPU per model at its default size: eager PyTorch, ONNX Runtime, TorchScript
      (each exported file passes the 1e-3 parity check first; export time is reported too).
  python benchmarks/bench_predict.py memory --model unet --shape 300 512 512
      peak RSS of `smaformer predict` on a synthetic 512x512x300 int16 CT NIfTI, measured in a fresh
      process (ru_maxrss), with and without --save-probabilities.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.export import export_onnx, export_torchscript
from smaformer.export.runtimes import onnxruntime_runner
from smaformer.models import create_model

CT_WINDOW = {"mode": "window", "lo": -125, "hi": 275}


def _checkpoint(name: str, folder: Path) -> tuple[Path, torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = getattr(model, "img_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    pre = default_preprocessing(size, getattr(model, "in_chans", 3), "repeat", CT_WINDOW)
    ckpt = build_checkpoint(model, [f"c{i}" for i in range(9)], pre)
    info = {k: ckpt[k] for k in ("model", "classes", "preprocessing")}
    return save_checkpoint(ckpt, folder / f"{name}.pt"), model, info


def _rate(fn, x: torch.Tensor, seconds: float) -> float:
    """Slices per second of ``fn`` on batch ``x`` (one warm-up call, then repeat for ``seconds``)."""
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| model | input | eager slices/s | ONNX Runtime slices/s | TorchScript slices/s | export s (onnx/ts) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            _, model, info = _checkpoint(name, Path(tmp))
            h, w = info["preprocessing"]["img_size"]
            x = torch.rand(args.batch, 3, h, w)
            with torch.inference_mode():
                eager = _rate(model, x, args.seconds)
            cells, times = [], []
            for fmt in ("onnx", "torchscript"):
                flag = model.export_flags.get(fmt, False)
                if not flag:
                    cells.append("n/a (flag False)")
                    times.append("-")
                    continue
                t0 = time.perf_counter()
                try:
                    if fmt == "onnx":
                        export_onnx(model, info, Path(tmp) / f"{name}.onnx")
                        run, _ = onnxruntime_runner(Path(tmp) / f"{name}.onnx")
                    else:
                        export_torchscript(model, info, Path(tmp) / f"{name}.ts")
                        ts = torch.jit.load(str(Path(tmp) / f"{name}.ts"))
                        run = lambda t, ts=ts: ts(t)  # noqa: E731
                except Exception as e:  # noqa: BLE001 - a failed export is a result row, not a crash
                    cells.append(f"export failed ({type(e).__name__})")
                    times.append("-")
                    continue
                times.append(f"{time.perf_counter() - t0:.0f}")
                with torch.inference_mode():
                    cells.append(f"{_rate(run, x, args.seconds):.2f}")
            print(f"| {name} | {args.batch}x3x{h}x{w} | {eager:.2f} | {cells[0]} | {cells[1]} | {'/'.join(times)} |",
                  flush=True)


def memory(args: argparse.Namespace) -> None:
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, _, _ = _checkpoint(args.model, tmp)
        d, h, w = args.shape
        vol = np.random.default_rng(0).integers(-1000, 1500, size=(w, h, d), dtype=np.int16)
        ct = tmp / "ct.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.7, 1.5, 1.0])), str(ct))
        del vol
        print("| model | volume | options | wall s | peak RSS MiB | RSS after model load MiB |")
        print("|---|---|---|---|---|---|")
        for extra in ([], ["--save-probabilities"]):
            cmd = [sys.executable, __file__, "child", str(ckpt), str(ct), str(tmp / "seg.nii.gz"),
                   str(args.threads), str(args.batch), *extra]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
            if line is None:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                continue
            _, rc, secs, peak, base = line.split()
            if rc != "0":
                print(f"predict failed (exit code {rc}); no row:", proc.stderr[-2000:])
                continue
            print(f"| {args.model} | {w}x{h}x{d} int16 | {' '.join(extra) or 'labels only'} | {float(secs):.0f} "
                  f"| {int(peak) / 1024:.0f} | {int(base) / 1024:.0f} |", flush=True)


def child(argv: list[str]) -> None:
    """Fresh process: load the model (baseline RSS), run `smaformer predict`, print peak RSS (KiB)."""
    import resource

    from smaformer.checkpoint import load_checkpoint
    from smaformer.cli import main as cli

    ckpt, ct, out, threads, batch, *extra = argv
    torch.set_num_threads(int(threads))
    load_checkpoint(ckpt)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rc = cli(["predict", "-i", ct, "-o", out, "-c", ckpt, "--quiet", "--device", "cpu", "--batch-size", batch, *extra])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT", rc, time.perf_counter() - t0, peak, base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--models", nargs="+", default=["unet"])
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--threads", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--model", default="unet")
    m.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("D", "H", "W"))
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--threads", type=int, default=2)
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2:])
        return
    args = p.parse_args()
    speed(args) if args.what == "speed" else memory(args)


if __name__ == "__main__":
    main()

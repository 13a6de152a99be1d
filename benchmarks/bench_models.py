"""Benchmark: forward latency/throughput (eager and ONNX Runtime), train-step throughput and peak RSS per model.

Each (model, phase) runs in a fresh subprocess so its peak RSS (``ru_maxrss``, which includes the Python
interpreter and the torch import) belongs to that phase alone. Phases:

- ``eager``: ``torch.inference_mode`` forward; latency at batch 1 (median ms) and throughput at batch 16 (img/s);
- ``onnx``: export with a dynamic batch axis, then the same two numbers with ONNX Runtime (CPU provider,
  ``intra_op_num_threads`` = threads); the outputs are checked against eager;
- ``train``: AdamW step (forward, cross-entropy, backward, step) at batch 4, samples/s.

Every row records the 1-minute load average at its end: on a shared machine the numbers are only as good
as that reading.

``--ratios`` is a separate table, in this one process: bf16 autocast / fp32 and our window-attention paths
now / as before (5-D SDPA, ``torch.roll`` + permute copies, restated in ``legacy_swin``), for the forward
(inference mode) and the AdamW train step at batches 1 and 8. Variants alternate within each round and the
ratio is the median over rounds of the per-round ratios; the CPU model, its bf16 units and the load go
with it.

    python benchmarks/bench_models.py                          # all models, all phases, 2 threads
    python benchmarks/bench_models.py --models medt --phases eager train --repeats 3
    python benchmarks/bench_models.py --ratios --models swin_unet smaformer_compat smaformer_native medt --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# name -> (registry name, constructor kwargs, input side)
SPECS: dict[str, tuple[str, dict, int]] = {
    "swin_unet": ("swin_unet", {"img_size": 224}, 224),
    "smaformer_compat": ("smaformer", {"img_size": 224, "resize_to": 224}, 224),
    "smaformer_native": ("smaformer", {"img_size": 256}, 256),
    "medt": ("medt", {"img_size": 128}, 128),
    "hbformer": ("hbformer", {"img_size": 256}, 256),
    "transunet": ("transunet", {"img_size": 224}, 224),
}
PHASES = ("eager", "onnx", "train")


def build(spec: str, tiny: bool) -> tuple[torch.nn.Module, int]:
    """The model of ``spec`` (its tiny variant at 64x64 when ``tiny``) and its input side."""
    from smaformer import create_model
    from smaformer.models.registry import tiny_kwargs

    name, kwargs, side = SPECS[spec]
    if tiny:
        kwargs = {**kwargs, **tiny_kwargs(name), "img_size": 64}
        kwargs.update({"resize_to": 64} if "resize_to" in kwargs else {})
        side = 64
    torch.manual_seed(0)
    return create_model(name, **kwargs), side


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_eager(model: torch.nn.Module, side: int, repeats: int, batch: int) -> dict[str, float]:
    model.eval()
    x1, xb = torch.randn(1, model.in_chans, side, side), torch.randn(batch, model.in_chans, side, side)
    with torch.inference_mode():
        lat = median_time(lambda: model(x1), repeats)
        big = median_time(lambda: model(xb), max(1, repeats // 2))
    return {"latency_b1_ms": 1e3 * lat, f"throughput_b{batch}_img_s": batch / big}


def ort_session(model: torch.nn.Module, side: int, threads: int, tmp: Path):
    """An ONNX Runtime session of ``model`` exported by the shipped exporter (``smaformer export``: the
    torch.export-based exporter first, the TorchScript-based one when that fails, parity verified), and a
    note naming the exporter that worked."""
    import onnxruntime as ort

    from smaformer.checkpoint import default_preprocessing
    from smaformer.export import export_onnx

    info = {"model": {"name": getattr(model, "model_name", type(model).__name__), "kwargs": {}},
            "classes": [str(k) for k in range(model.num_classes)],
            "preprocessing": default_preprocessing((side, side), model.in_chans, "none")}
    result = export_onnx(model, info, tmp / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    note = result.exporter + "".join(f"; {n}" for n in result.notes if n.startswith("fell back"))
    return ort.InferenceSession(str(result.path), opts, providers=["CPUExecutionProvider"]), note


def run_onnx(model: torch.nn.Module, side: int, repeats: int, batch: int, threads: int) -> dict:
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sess, note = ort_session(model, side, threads, Path(tmp))
        export_s = time.perf_counter() - t0
    x1 = np.random.default_rng(0).standard_normal((1, model.in_chans, side, side), dtype=np.float32)
    xb = np.random.default_rng(1).standard_normal((batch, model.in_chans, side, side), dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x1)).numpy()
    diff = float(np.abs(sess.run(None, {"image": x1})[0] - ref).max())
    lat = median_time(lambda: sess.run(None, {"image": x1}), repeats)
    big = median_time(lambda: sess.run(None, {"image": xb}), max(1, repeats // 2))
    return {"latency_b1_ms": 1e3 * lat, f"throughput_b{batch}_img_s": batch / big, "export_s": export_s,
            "max_abs_diff_vs_eager": diff, "export": note}


def run_train(model: torch.nn.Module, side: int, repeats: int, batch: int = 4) -> dict[str, float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    num_classes = getattr(model, "num_classes", 2)
    x = torch.randn(batch, model.in_chans, side, side)
    y = torch.randint(0, num_classes, (batch, side, side))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return {f"train_b{batch}_samples_s": batch / median_time(step, repeats)}


@contextlib.contextmanager
def legacy_swin():
    """Every SwinBlock as before the per-mode attention paths: roll + view/permute partition, 5-D SDPA with the
    (nW, heads, N, N) mask broadcast (PyTorch's math path), reverse + roll back. Same values to ~1e-6."""
    from smaformer.models.layers.swin import SwinBlock

    def attention(attn, x: torch.Tensor, window: int, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        q, k, v = attn.qkv(x).reshape(b_, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        bias = attn.relative_bias(window).to(q.dtype)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=attn.scale)
        else:
            shape = (b_ // mask.shape[0], mask.shape[0], attn.num_heads, n, -1)
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), scale=attn.scale,
                                                 attn_mask=bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1))
        return attn.proj(out.reshape(b_, attn.num_heads, n, -1).transpose(1, 2).reshape(b_, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        window, shift = self.geometry(h, w)
        y = self.norm1(x)
        pad_h, pad_w = (-h) % window, (-w) % window
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else y
        hp, wp = h + pad_h, w + pad_w
        y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2)) if shift else y
        win = y.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
        win = attention(self.attn, win.reshape(-1, window * window, c), window, self.window_mask(h, w, x.device))
        y = win.reshape(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, hp, wp, c)
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2)) if shift else y
        y = x + self.drop_path(y[:, :h, :w])
        return y + self.drop_path(self.mlp(self.norm2(y)))

    original, SwinBlock.forward = SwinBlock.forward, forward
    try:
        yield
    finally:
        SwinBlock.forward = original


def _call(model: torch.nn.Module, opt: torch.optim.Optimizer, mode: str, x: torch.Tensor, y: torch.Tensor,
          precision: str, legacy: bool = False) -> None:
    """One inference-mode forward or one train step, in fp32 or under bf16 autocast, on either Swin path."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with legacy_swin() if legacy else contextlib.nullcontext(), ctx:
        if mode == "forward":
            with torch.inference_mode():
                model.eval()(x)
        else:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model.train()(x).float(), y).backward()
            opt.step()


def ratios(spec: str, repeats: int, batches: tuple[int, ...] = (1, 8), tiny: bool = False,
           modes: tuple[str, ...] = ("forward", "train"), bf16: bool = True) -> list[dict]:
    """Per (mode, batch): median seconds of fp32, bf16 (unless ``bf16`` is False) and legacy-fp32, and the
    median per-round ratios."""
    model, side = build(spec, tiny)
    has_swin = any(type(m).__name__ == "SwinBlock" for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every round sees the same weights
    rows = []
    for mode in modes:
        for batch in batches:
            x = torch.randn(batch, model.in_chans, side, side)
            y = torch.randint(0, model.num_classes, (batch, side, side))

            call = functools.partial(_call, model, opt, mode, x, y)
            variants = {"fp32": functools.partial(call, "fp32")}
            if bf16:
                variants["bf16"] = functools.partial(call, "bf16")
            if has_swin:
                variants["legacy_fp32"] = functools.partial(call, "fp32", legacy=True)
            times: dict[str, list[float]] = {k: [] for k in variants}
            for fn in variants.values():
                fn()  # warm-up
            for r in range(repeats):
                keys = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]  # rotate the order
                for key in keys:
                    t0 = time.perf_counter()
                    variants[key]()
                    times[key].append(time.perf_counter() - t0)
            row = {"model": spec, "input": side, "mode": mode, "batch": batch, "rounds": repeats,
                   **{f"{k}_s": statistics.median(v) for k, v in times.items()},
                   "load_1min": os.getloadavg()[0]}
            if bf16:
                row["bf16_over_fp32"] = statistics.median(
                    b / f for b, f in zip(times["bf16"], times["fp32"], strict=True))
            if has_swin:
                row["new_over_legacy_fp32"] = statistics.median(
                    f / o for f, o in zip(times["fp32"], times["legacy_fp32"], strict=True))
            rows.append(row)
            print(ratio_row(row), flush=True)
    return rows


def ratio_row(r: dict) -> str:
    legacy = f"{1e3 * r['legacy_fp32_s']:.0f} | {r['new_over_legacy_fp32']:.2f}" if "legacy_fp32_s" in r else "- | -"
    low = f"{1e3 * r['bf16_s']:.0f} | **{r['bf16_over_fp32']:.2f}**" if "bf16_s" in r else "- | -"
    return (f"| {r['model']} ({r['input']}) | {r['mode']} | {r['batch']} | {1e3 * r['fp32_s']:.0f} | {low} | "
            f"{legacy} | {r['load_1min']:.1f} |")


def train_curve(steps: int, batch: int = 8, side: int = 128) -> list[dict]:
    """bf16 vs fp32 training of the small ACDC Swin-Unet (embed 32, heads 1/2/4/8, window 8) on synthetic
    phantoms: two copies from the same init see the same batches, their steps alternate, each step is timed.
    Rows: step, loss of each, seconds of each."""
    from smaformer import create_model
    from smaformer.data.synthetic import make_phantom

    vols = [make_phantom(seed, (24, side, side), num_classes=4) for seed in range(4)]
    images = torch.from_numpy(np.concatenate([np.clip((v.image + 125) / 400, 0, 1) for v in vols])).float()
    labels = torch.from_numpy(np.concatenate([v.label for v in vols]))
    torch.manual_seed(0)
    nets = {"fp32": create_model("swin_unet", num_classes=4, img_size=side, embed_dim=32, num_heads=[1, 2, 4, 8],
                                 window_size=8).train()}
    nets["bf16"] = copy.deepcopy(nets["fp32"])
    opts = {k: torch.optim.AdamW(n.parameters(), lr=3e-4) for k, n in nets.items()}
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    rows = []
    for step in range(steps):
        idx = order[(step * batch) % len(order):][:batch]
        x, y = images[idx, None].expand(-1, 3, -1, -1), labels[idx]
        row = {"step": step + 1}
        for key, net in nets.items():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if key == "bf16" else contextlib.nullcontext()
            t0 = time.perf_counter()
            opts[key].zero_grad(set_to_none=True)
            with ctx:
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            opts[key].step()
            row[f"{key}_loss"], row[f"{key}_s"] = loss.item(), time.perf_counter() - t0
        rows.append(row)
        if (step + 1) % 10 == 0 or step == 0:
            print(f"| {step + 1} | {row['fp32_loss']:.4f} | {row['bf16_loss']:.4f} | {row['fp32_s']:.2f} | "
                  f"{row['bf16_s']:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)
    return rows


def worker(spec: str, phase: str, repeats: int, threads: int, tiny: bool) -> dict:
    """Run one phase of one model in this process; returns its numbers plus peak RSS and load."""
    torch.set_num_threads(threads)
    model, side = build(spec, tiny)
    batch = 2 if tiny else 16
    if phase == "eager":
        out = run_eager(model, side, repeats, batch)
    elif phase == "onnx":
        out = run_onnx(model, side, repeats, batch, threads)
    else:
        out = run_train(model, side, repeats)
    out.update(model=spec, phase=phase, input=f"{side}x{side}", params=sum(p.numel() for p in model.parameters()),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, threads=threads,
               load_1min=os.getloadavg()[0])
    return out


def spawn(spec: str, phase: str, repeats: int, threads: int, tiny: bool) -> dict:
    """Run :func:`worker` in a fresh interpreter (clean peak RSS); errors come back as ``{"error": ...}``."""
    cmd = [sys.executable, __file__, "--worker", spec, phase, "--repeats", str(repeats), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd + (["--tiny"] if tiny else []), capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "error:" in ln]
        tail = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": spec, "phase": phase, "error": tail[:200]}
    return json.loads(lines[-1])


def row(r: dict) -> str:
    """One markdown table row."""
    if "error" in r:
        return f"| {r['model']} | {r['phase']} | failed: {r['error']} | | | | |"
    speed = next((f"{v:.2f}" for k, v in r.items() if k.startswith("train_b")), "")
    lat = f"{r['latency_b1_ms']:.1f}" if "latency_b1_ms" in r else ""
    thr = next((f"{v:.2f}" for k, v in r.items() if k.startswith("throughput_b")), "")
    note = ""
    if r["phase"] == "onnx":
        note = f"diff vs eager {r['max_abs_diff_vs_eager']:.1e}; {r['export']}, export {r['export_s']:.0f} s"
    return (f"| {r['model']} ({r['input']}, {r['params'] / 1e6:.1f}M) | {r['phase']} | {lat} | {thr} | {speed} | "
            f"{r['peak_rss_mb']:.0f} | {r['load_1min']:.1f} | {note} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny variants at 64x64, batch 2 (smoke test)")
    ap.add_argument("--json", type=Path, help="also write all results to this JSON file")
    ap.add_argument("--ratios", action="store_true",
                    help="bf16/fp32 and new/legacy attention-path ratios (forward and train step, batch 1 and 8)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="--ratios: batch sizes")
    ap.add_argument("--modes", nargs="+", choices=("forward", "train"), default=["forward", "train"],
                    help="--ratios: what to time")
    ap.add_argument("--no-bf16", action="store_true", help="--ratios: only fp32 now vs legacy (emulated bf16 is slow)")
    ap.add_argument("--train-curve", type=int, metavar="STEPS",
                    help="bf16 vs fp32 loss curve and step time of the small ACDC Swin-Unet on phantoms")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads, args.tiny)))
        return
    if args.train_curve:
        from smaformer.runtime import cpu_description

        torch.set_num_threads(args.threads)
        print(f"{cpu_description()}; torch {torch.__version__}, {args.threads} threads; batch 8, 128x128, AdamW 3e-4")
        print("| step | fp32 loss | bf16 loss | fp32 step s | bf16 step s | load 1m |\n|---|---|---|---|---|---|")
        rows = train_curve(args.train_curve)
        ratio = statistics.median(r["bf16_s"] / r["fp32_s"] for r in rows[1:])
        gap = max(abs(r["bf16_loss"] - r["fp32_loss"]) for r in rows)
        print(f"median bf16/fp32 step time {ratio:.2f}; largest loss gap {gap:.4f}; last losses "
              f"{rows[-1]['fp32_loss']:.4f} / {rows[-1]['bf16_loss']:.4f}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return
    if args.ratios:
        from smaformer.runtime import cpu_description

        torch.set_num_threads(args.threads)
        print(f"{cpu_description()}; torch {torch.__version__}, {args.threads} threads, {args.repeats} rounds; "
              f"load {os.getloadavg()[0]:.1f} at start")
        print("| model (input) | mode | batch | fp32 ms | bf16 ms | bf16/fp32 | legacy fp32 ms | new/legacy fp32 | "
              "load 1m |\n" + "|---" * 9 + "|")
        results = [r for spec in args.models for r in ratios(spec, args.repeats, tuple(args.batches),
                                                             modes=tuple(args.modes), bf16=not args.no_bf16)]
        if args.json:
            args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
        return
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats}; "
          f"throughput at batch {2 if args.tiny else 16}, train at batch 4")
    print("| model (input, params) | phase | latency b1 ms | throughput img/s | train samples/s | peak RSS MiB | "
          "load 1m | note |")
    print("|" + "---|" * 8)
    results = []
    for spec in args.models:
        for phase in args.phases:
            results.append(spawn(spec, phase, args.repeats, args.threads, args.tiny))
            print(row(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Benchmark: our Swin window attention (SDPA, cached shift masks) vs a re-statement of the official path.

The reference ("official") is written here from the published algorithm of Swin V1 / Swin-Unet: explicit
``(q * scale) @ k^T``, the relative-position bias gathered from the table every call, the shift mask added
through a ``(B/nW, nW, heads, N, N)`` view, softmax, ``@ v``, window partition/reverse through ``view`` and
``permute(...).contiguous()``. The shift mask (0 / -100) is rebuilt on every forward from an image of region
ids, as the Swin segmentation code does in ``BasicLayer.forward``; ``--cached-mask`` times the reference
with the mask built once instead (Swin-Unet 7d80541 builds it in ``__init__``), so both readings are available.

Both paths run with the same weights (the reference reads our block's parameters) and the outputs are
compared (max abs diff asserted below ``--tol``). Timings are medians of interleaved repeats (ours, ref,
ours, ref, ...), so background load hits both alike. Three levels are timed per stage:

- ``attn``: the attention path of every block: norm1, roll, partition, attention, reverse, roll back;
- ``stage``: the whole stage (blocks with MLPs and residuals);
- ``model``: full forward of the model with every SwinBlock switched to the reference path.

A last table times the attention core alone in three tensor layouts (``sdpa_layouts``), to show where the
SDPA path loses time on CPU.

    python benchmarks/bench_attention.py                  # Swin-Unet 224 and SMAFormer 256 stages, batch 4
    python benchmarks/bench_attention.py --batch 1 --repeats 20 --cached-mask
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from smaformer.models.layers.swin import MASK_VALUE, SwinBlock, SwinStage

# (label, resolution of the token map, dim, heads, depth, window): encoder stages of the two models
STAGES = {
    "swin_unet@224": [(56, 96, 3, 2, 7), (28, 192, 6, 2, 7), (14, 384, 12, 2, 7), (7, 768, 24, 2, 7)],
    "smaformer@256": [(64, 96, 3, 2, 8), (32, 192, 6, 2, 8), (16, 384, 12, 6, 8), (8, 768, 24, 2, 8)],
}


def ref_shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, N, N) shift mask built the official way: region-id image, window partition, pairwise compare."""
    img = torch.zeros(1, hp, wp, 1, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for hs in cuts:
        for ws in cuts:
            img[:, hs, ws, :] = count
            count += 1
    ids = ref_partition(img, window).view(-1, window * window)
    mask = ids.unsqueeze(1) - ids.unsqueeze(2)
    return mask.masked_fill(mask != 0, MASK_VALUE).masked_fill(mask == 0, 0.0)


def ref_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, window, window, C) through view/permute/contiguous."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def ref_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B*nW, window, window, C) -> (B, H, W, C)."""
    b = int(windows.shape[0] / (h * w / window / window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def ref_window_attention(block: SwinBlock, x: torch.Tensor, window: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Explicit matmul-softmax window attention on (B*nW, N, C) with the block's weights."""
    attn = block.attn
    b_, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    scores = scores + attn.relative_bias(window).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        scores = scores.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, heads, n, n)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b_, n, c)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


def ref_attention_path(block: SwinBlock, x: torch.Tensor, cached: dict | None = None) -> torch.Tensor:
    """norm1 -> roll -> partition -> attention -> reverse -> roll back, on (B, H, W, C); no padding needed here.

    ``cached`` None rebuilds the shift mask (per forward); a dict keeps it across calls."""
    b, h, w, c = x.shape
    window, shift = block.geometry(h, w)
    if h % window or w % window:
        raise ValueError(f"reference path needs {h}x{w} to be a multiple of the window {window}")
    x = block.norm1(x.view(b, h * w, c)).view(b, h, w, c)
    mask = None
    if shift:
        mask = cached.get((h, w)) if cached is not None else None
        if mask is None:
            mask = ref_shift_mask(h, w, window, shift, x.device)
            if cached is not None:
                cached[(h, w)] = mask
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = ref_partition(x, window).view(-1, window * window, c)
    windows = ref_window_attention(block, windows, window, mask).view(-1, window, window, c)
    x = ref_reverse(windows, window, h, w)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x


def ref_block(block: SwinBlock, x: torch.Tensor, cached: dict | None = None) -> torch.Tensor:
    """The full official block on (B, H, W, C) tokens: x + attn(LN(x)), then x + MLP(LN(x))."""
    b, h, w, c = x.shape
    x = x + ref_attention_path(block, x, cached)
    flat = x.view(b, h * w, c)
    return (flat + block.mlp(block.norm2(flat))).view(b, h, w, c)


def our_attention_path(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Our attention residual branch (SwinBlock.forward minus the residual and MLP), for the ``attn`` level:
    norm1, one index_select for roll + partition, attention, one for reverse + roll back."""
    b, h, w, c = x.shape
    window, _ = block.geometry(h, w)
    mask, order, inverse = block._layout(h, w, x.device)
    win = block.norm1(x).reshape(b, h * w, c).index_select(1, order).view(-1, window * window, c)
    win = block.attn(win, window, mask)
    return win.reshape(b, h * w, c).index_select(1, inverse).view(b, h, w, c)


@contextlib.contextmanager
def reference_blocks(cached_mask: bool) -> Iterator[None]:
    """Temporarily route every SwinBlock.forward through the reference path (for whole-model timing)."""
    original = SwinBlock.forward
    caches: dict[int, dict] = {}

    def forward(self: SwinBlock, x: torch.Tensor) -> torch.Tensor:
        return ref_block(self, x, caches.setdefault(id(self), {}) if cached_mask else None)

    SwinBlock.forward = forward
    try:
        yield
    finally:
        SwinBlock.forward = original


def interleaved(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so load drifts affect all alike.

    Returns wall-clock medians under each key and process-CPU-time medians under ``key + "_cpu"`` (CPU time
    is less disturbed when other jobs share the cores)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{k + "_cpu": statistics.median(v) for k, v in cpu.items()}}


def bench_stage(res: int, dim: int, heads: int, depth: int, window: int, batch: int, repeats: int,
                cached_mask: bool, tol: float) -> dict[str, float]:
    """Time ours vs reference at the ``attn`` and ``stage`` levels for one stage; assert equal outputs."""
    torch.manual_seed(0)
    stage = SwinStage(dim, depth, heads, window).eval()
    for block in stage.blocks:  # non-zero bias so the bias path is exercised
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    x = torch.randn(batch, res, res, dim)
    caches = [{} for _ in stage.blocks]

    def ref_attn() -> torch.Tensor:
        return [ref_attention_path(b, x, caches[i] if cached_mask else None) for i, b in enumerate(stage.blocks)][-1]

    def our_attn() -> torch.Tensor:
        return [our_attention_path(b, x) for b in stage.blocks][-1]

    def ref_stage() -> torch.Tensor:
        y = x
        for i, b in enumerate(stage.blocks):
            y = ref_block(b, y, caches[i] if cached_mask else None)
        return y

    with torch.inference_mode():
        diff = max((ref_attn() - our_attn()).abs().max().item(), (ref_stage() - stage(x)).abs().max().item())
        if diff > tol:
            raise AssertionError(f"stage {res}x{res}x{dim}: outputs differ by {diff:.2e} > {tol:.0e}")
        t = interleaved({"ours_attn": our_attn, "ref_attn": ref_attn, "ours_stage": lambda: stage(x),
                         "ref_stage": ref_stage}, repeats)
    return {**t, "max_abs_diff": diff}


def bench_model(name: str, batch: int, repeats: int, cached_mask: bool, tol: float) -> dict[str, float]:
    """Whole-model forward, ours vs every SwinBlock on the reference path; assert equal logits."""
    from smaformer import create_model

    size = 224 if name == "swin_unet" else 256
    torch.manual_seed(0)
    model = create_model(name, img_size=size).eval()
    x = torch.randn(batch, model.in_chans, size, size)

    def ref() -> torch.Tensor:
        with reference_blocks(cached_mask):
            return model(x)

    with torch.inference_mode():
        diff = (ref() - model(x)).abs().max().item()
        if diff > tol:
            raise AssertionError(f"{name}: logits differ by {diff:.2e} > {tol:.0e}")
        t = interleaved({"ours_model": lambda: model(x), "ref_model": ref}, repeats, warmup=1)
    return {**t, "max_abs_diff": diff}


def sdpa_layouts(batch: int, res: int, window: int, heads: int, head_dim: int, repeats: int) -> dict[str, float]:
    """The attention core alone for one shifted stage, four ways: SDPA on 5D (B, nW, heads, N, d) tensors with
    the (nW, heads, N, N) bias+mask broadcast (``WindowAttention`` before 2026-12-01), SDPA on 4D tensors with
    the mask repeated to (B*nW, heads, N, N), SDPA on 4D tensors with the windows folded into the heads,
    (B, nW*heads, N, d), and the mask broadcast over the batch (``WindowAttention``'s fused path now), and
    explicit matmul-softmax (its training path). Median ms of each."""
    nw, n = (res // window) ** 2, window * window
    q, k, v = (torch.randn(batch, nw, heads, n, head_dim) for _ in range(3))
    mask = torch.randn(nw, heads, n, n)
    flat = [t.reshape(batch * nw, heads, n, head_dim) for t in (q, k, v)]

    folded = [t.reshape(batch, nw * heads, n, head_dim) for t in (q, k, v)]

    def explicit() -> torch.Tensor:
        scores = (flat[0] * head_dim ** -0.5) @ flat[1].transpose(-2, -1)
        scores = (scores.view(batch, nw, heads, n, n) + mask).view(-1, heads, n, n)
        return scores.softmax(-1) @ flat[2]

    with torch.inference_mode():
        t = interleaved({
            "sdpa_5d": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            "sdpa_4d": lambda: F.scaled_dot_product_attention(*flat, attn_mask=mask.repeat(batch, 1, 1, 1)),
            "sdpa_4d_heads": lambda: F.scaled_dot_product_attention(*folded, attn_mask=mask.view(1, nw * heads, n, n)),
            "explicit": explicit}, repeats)
    return {k: 1e3 * v for k, v in t.items() if not k.endswith("_cpu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--model-repeats", type=int, default=3, help="repeats of the whole-model timing (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cached-mask", action="store_true", help="reference builds each shift mask once")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed between outputs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mask_mode = "cached" if args.cached_mask else "rebuilt per forward"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"reference mask {mask_mode}, medians of {args.repeats}")
    print("| model | stage (HxW, C, heads, depth, win) | ours attn ms | ref attn ms | attn ratio (cpu) | "
          "ours stage ms | ref stage ms | stage ratio (cpu) | max abs diff |")
    print("|" + "---|" * 9)
    for model, stages in STAGES.items():
        for res, dim, heads, depth, window in stages:
            r = bench_stage(res, dim, heads, depth, window, args.batch, args.repeats, args.cached_mask, args.tol)
            print(f"| {model} | {res}x{res}, {dim}, {heads}, {depth}, {window} | {_pair(r, 'attn')} | "
                  f"{_pair(r, 'stage')} | {r['max_abs_diff']:.1e} |", flush=True)
    print("\n| attention core of a shifted stage (B, HxW, win, heads) | SDPA 5D broadcast mask ms | "
          "SDPA 4D repeated mask ms | SDPA 4D windows-in-heads ms | explicit ms |\n|---|---|---|---|---|")
    for res, window, heads in ((56, 7, 3), (64, 8, 3), (16, 8, 12)):
        r = sdpa_layouts(args.batch, res, window, heads, 32, args.repeats)
        print(f"| {args.batch}, {res}x{res}, {window}, {heads} | {r['sdpa_5d']:.2f} | {r['sdpa_4d']:.2f} | "
              f"{r['sdpa_4d_heads']:.2f} | {r['explicit']:.2f} |", flush=True)
    if args.model_repeats:
        print("\n| model | ours forward ms | ref forward ms | ratio (cpu) | max abs diff |\n|---|---|---|---|---|")
        for name in ("swin_unet", "smaformer"):
            r = bench_model(name, args.batch, args.model_repeats, args.cached_mask, args.tol)
            print(f"| {name} | {_pair(r, 'model')} | {r['max_abs_diff']:.1e} |", flush=True)


def _pair(r: dict[str, float], level: str) -> str:
    """'ours ms | ref ms | wall ratio (cpu-time ratio)' cells for one level."""
    ours, ref = r[f"ours_{level}"], r[f"ref_{level}"]
    cpu = r[f"ours_{level}_cpu"] / r[f"ref_{level}_cpu"]
    return f"{1e3 * ours:.2f} | {1e3 * ref:.2f} | {ours / ref:.2f} ({cpu:.2f})"

if __name__ == "__main__":
    main()

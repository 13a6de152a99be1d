"""Everything a lent GPU (H100/H200) should tell us, in one command of at most ~9 minutes. The ACDC
answer comes first; the speed table gets what is left.

1. the pair probe (``gpu_pair.py``): the two ACDC models' bf16 training steps at batch 24, each alone and
   both side by side (two processes), a few seconds each, with peak memory and a checkpoint save;
2. the ACDC recipes of Swin-Unet and SMAFormer from scratch (``gpu_acdc.py``), trained **at the same time**
   on the one GPU, with epochs fitted from (1) so both end before the deadline with annealed schedules,
   each then scored by ``smaformer evaluate`` on the 20 validation volumes (per-class Dice, HD95, time);
3. with the time left, the speed table: inference slices/s of every model at batch 64, bf16 autocast and
   plain fp32 (``torch.inference_mode``, warm-up, then timed iterations, each followed by
   ``torch.cuda.synchronize``), bf16 AMP training slices/s at batch 24, and the peak GPU memory of each;
4. one JSON (``gpu_check.json``) and one log under ``$OUT`` (default ``runs/gpu_check``): the device,
   torch/CUDA versions, every figure, ``started_s``/``ended_s`` of every run, and what was skipped or
   reduced and why.

Each measurement is guarded: a failure (an OOM, say) is recorded and the rest goes on. A global deadline
(``--deadline``, default 540 s) is respected: a measurement is not started when too little time is left.
The JSON is rewritten after every section (and every 10 s while the ACDC runs train), so a kill keeps the rest.

    python benchmarks/pack_acdc.py                                   # here: ../shared/data/acdc -> pack/
    python benchmarks/gpu_check.py --data pack/acdc_u8.npz           # on the device, carry ["pack"]
    python benchmarks/gpu_check.py --dry-run                         # CPU, tiny models, a few seconds
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()       # the deadline counts from here (imports included)
REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_DATA = REPO / "pack" / "acdc_u8.npz"
sys.path[:0] = [str(REPO), str(BENCH)]          # smaformer need not be installed on the device machine


def _site_for(data: Path) -> Path | None:
    """Put ``<pack folder>/site`` (nibabel copied by pack_acdc.py) on the path when nibabel is missing."""
    try:
        import nibabel  # noqa: F401
        return None
    except ImportError:
        site = Path(data).resolve().parent / "site"
        sys.path.insert(0, str(site))
        return site


class Report:
    """The JSON record, the log, the deadline and the guards around each measurement."""

    def __init__(self, out: Path, deadline_s: float, argv: list[str]):
        self.t0, self.deadline_s, self.out = T0, deadline_s, out
        out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.json_path = out / "gpu_check.log", out / "gpu_check.json"
        self._log = self.log_path.open("w", encoding="utf-8")
        self._lock = threading.RLock()       # the two ACDC runs log from their own threads
        self.data: dict = {"format": "smaformer-gpu-check", "version": 1,
                           "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                           "argv": argv, "deadline_s": deadline_s, "skipped": [], "errors": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        with self._lock:
            print(line, flush=True)
            self._log.write(line + "\n")
            self._log.flush()

    def append_log(self, path: Path, title: str) -> None:
        """Copy a subprocess's log into this log."""
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)\n"
        with self._lock:
            self._log.write(f"----- {title} -----\n{text}----- end of {title} -----\n")
            self._log.flush()

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.log(f"skipped {what}: {why}")

    @contextlib.contextmanager
    def guard(self, what: str, rows: list | None = None, row: dict | None = None):
        """Record an exception (and an error row in ``rows``) instead of raising it."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every failure is recorded, then the rest goes on
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            self.data["errors"].append({"what": what, "error": msg})
            if rows is not None:
                rows.append({**(row or {}), "error": msg})
            self.log(f"FAILED {what}: {msg}\n{traceback.format_exc()}")
            free_memory()

    def save(self) -> None:
        with self._lock:
            self.data["wall_s"] = round(self.elapsed(), 1)
            tmp = self.json_path.with_name(self.json_path.name + ".partial")
            tmp.write_text(json.dumps(_clean(self.data), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.json_path)


def _clean(obj):
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(device) -> dict:
    import numpy
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__,
           "device": str(device), "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None, "cudnn_benchmark": True, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=15)
            env["nvidia_smi"] = q.stdout.strip()
    else:
        env["device_name"] = platform.processor() or "cpu"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        q = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10)
        env["git_commit"] = q.stdout.strip() or None
    return env


def timed_loop(fn, sync, warmup: int, iters: int, max_s: float) -> tuple[int, float]:
    """Run ``fn`` ``warmup`` times, then up to ``iters`` times (fewer when ``max_s`` has passed, at least
    once), synchronising after each call; returns (timed calls, seconds)."""
    for _ in range(warmup):
        fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < iters:
        fn()
        sync()
        n += 1
        if time.perf_counter() - t0 > max_s:
            break
    return n, time.perf_counter() - t0


def measure_model(rep: Report, spec: str, opts: argparse.Namespace, device, inf_rows: list,
                  train_rows: list) -> None:
    """Inference (each precision) and bf16 training of one model, one row per measurement."""
    import torch
    import torch.nn.functional as F
    from bench_models import build

    from smaformer.runtime import autocast

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: round(torch.cuda.max_memory_allocated(device) / 2**20, 1)) if cuda else (lambda: None)
    reset = (lambda: torch.cuda.reset_peak_memory_stats(device)) if cuda else (lambda: None)
    model, side = build(spec, opts.tiny)
    model = model.to(device)
    base = {"model": spec, "input": f"{side}x{side}", "params": sum(p.numel() for p in model.parameters())}
    model.eval()
    for prec in opts.precisions:
        row = {**base, "precision": prec, "batch": opts.infer_batch}
        if rep.left() < opts.reserve_s:
            rep.skip(f"inference {spec} {prec}", f"deadline: {rep.left():.0f} s left")
            continue
        with rep.guard(f"inference {spec} {prec}", inf_rows, row):
            x = torch.randn(opts.infer_batch, model.in_chans, side, side, device=device)
            free_memory()
            reset()
            with torch.inference_mode(), autocast(prec, device):
                n, s = timed_loop(lambda x=x: model(x), sync, opts.warmup, opts.iters, opts.max_measure_s)
            inf_rows.append({**row, "slices_s": round(opts.infer_batch * n / s, 1), "iterations": n,
                             "seconds": round(s, 3), "peak_mem_mib": peak()})
            rep.log(f"inference {spec} {prec} b{opts.infer_batch}: {inf_rows[-1]['slices_s']} slices/s, "
                    f"peak {inf_rows[-1]['peak_mem_mib']} MiB")
            del x
    row = {**base, "precision": opts.train_precision, "batch": opts.train_batch, "optimizer": "AdamW"}
    if rep.left() < opts.reserve_s:
        rep.skip(f"training {spec}", f"deadline: {rep.left():.0f} s left")
        return
    with rep.guard(f"training {spec}", train_rows, row):
        del model       # a fresh one: tensors a model cached under inference_mode cannot be saved for backward
        free_memory()
        model = build(spec, opts.tiny)[0].to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(opts.train_batch, model.in_chans, side, side, device=device)
        y = torch.randint(0, model.num_classes, (opts.train_batch, side, side), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(opts.train_precision, device):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        free_memory()
        reset()
        n, s = timed_loop(step, sync, opts.warmup, opts.iters, opts.max_measure_s)
        out = {**row, "slices_s": round(opts.train_batch * n / s, 1), "iterations": n, "seconds": round(s, 3),
               "peak_mem_mib": peak()}
        train_rows.append(out)
        rep.log(f"training {spec} b{opts.train_batch} {opts.train_precision}: {out['slices_s']} slices/s, "
                f"peak {out['peak_mem_mib']} MiB")


def speed(rep: Report, opts: argparse.Namespace, device) -> None:
    """The speed table: every model's inference and training rows, with the time the ACDC runs left."""
    import torch

    torch.backends.cudnn.benchmark = True      # as the trainer sets it (non-deterministic runs)
    inf = rep.data["inference"] = {"batch": opts.infer_batch, "precisions": opts.precisions, "warmup": opts.warmup,
                                   "max_iterations": opts.iters, "max_timed_s": opts.max_measure_s,
                                   "note": "bf16 = torch.autocast(bfloat16); fp32 = no autocast (TF32 flags in "
                                           "environment); slices/s = batch x timed iterations / seconds", "rows": []}
    train = rep.data["training"] = {"batch": opts.train_batch, "precision": f"{opts.train_precision} autocast, no "
                                    "loss scaler" if opts.train_precision == "bf16" else opts.train_precision,
                                    "step": "zero_grad, forward, cross-entropy, backward, AdamW step",
                                    "rows": []}
    for spec in opts.models:
        if rep.left() < opts.reserve_s:
            rep.skip(f"speed {spec}", f"deadline: {rep.left():.0f} s left")
            continue
        with rep.guard(f"build {spec}", inf["rows"], {"model": spec}):
            measure_model(rep, spec, opts, device, inf["rows"], train["rows"])
        free_memory()
        rep.save()


GOALS = {"smaformer bf16 inference slices/s": 3000, "smaformer AMP training slices/s": 600}   # docs/BENCHMARKS.md


def step_syncs(rep: Report, opts: argparse.Namespace, device) -> None:
    """A few training steps (tiny Swin-Unet, synthetic data, the loop's own step) with every step under
    ``torch.cuda.set_sync_debug_mode("error")``: a host sync inside the step raises and is recorded as an error.
    On the CPU (dry run) there is nothing to check: the steps run and the record says so."""
    import torch

    from smaformer.config import load_config
    from smaformer.train.loop import Trainer, train

    cuda = device.type == "cuda"
    step, steps = Trainer._step, []

    def strict(self, micro):
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self, micro)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            steps.append(1)

    cfg = load_config(None, ["model.name=swin_unet", "model.kwargs={embed_dim: 16, depths: [2, 2, 2, 1], "
                             "num_heads: [1, 2, 4, 8], window_size: 4}", "data.img_size=64", "data.num_workers=0",
                             "train.batch_size=4", "train.val_every=0", "train.log_every=1000",
                             f"train.device={device}", f"train.precision={opts.train_precision}",
                             "train.tensorboard=false", "train.epochs=1"])
    Trainer._step = strict
    try:
        with rep.guard("syncs"), tempfile.TemporaryDirectory() as tmp:
            train(cfg, run_dir=Path(tmp) / "run", stop_after=5, progress_bar=False, log=lambda *a: None)
            rep.data["syncs"] = {"steps": len(steps), "checked": "set_sync_debug_mode('error') around each step"
                                 if cuda else "not checked on the CPU (no device syncs exist there)", "ok": True}
            rep.log(f"syncs: {len(steps)} steps, {rep.data['syncs']['checked']}")
    finally:
        Trainer._step = step


def summary(data: dict) -> dict:
    """The figures at a glance: slices/s and peak MiB per model, the goals, the ACDC Dice."""
    out: dict = {}
    for section, key in (("inference", "inference_slices_s"), ("training", "training_slices_s")):
        for r in data.get(section, {}).get("rows", []):
            if "slices_s" in r:
                name = f"{r['model']} {r['precision']}"
                out.setdefault(key, {})[name] = r["slices_s"]
                out.setdefault(key.replace("slices_s", "peak_mem_mib"), {})[name] = r["peak_mem_mib"]
    inf, tr = out.get("inference_slices_s", {}), out.get("training_slices_s", {})
    out["goals"] = {
        goal: {spec: {"measured": v, "met": v >= target} for spec in ("smaformer_compat", "smaformer_native")
               if (v := (inf if "inference" in goal else tr).get(f"{spec} bf16")) is not None} or "not measured"
        for goal, target in GOALS.items()} if not data.get("dry_run") else "dry run: tiny models on CPU, not comparable"
    pair = data.get("pair", {})
    if pair.get("runs"):
        out["side_by_side"] = {"concurrency": pair.get("concurrency"), **{
            n: {k: r[k] for k in ("alone_slices_s", "together_slices_s", "peak_mem_mib")}
            for n, r in pair["runs"].items()}}
    out["acdc_dice_mean_standard"] = {
        r["run"]: {"dice": r["scores"]["dice_mean_standard"], "dice_per_class": r["scores"]["dice_per_class_standard"],
                   "epochs": r.get("epochs_done"), "of_recipe": r.get("epochs_recipe"),
                   "train_s": [r["train"]["started_s"], r["train"]["ended_s"]],
                   "evaluate_s": [r["evaluate"]["started_s"], r["evaluate"]["ended_s"]]}
        if "scores" in r else r.get("skipped") or "not scored"
        for r in data.get("acdc", {}).get("runs", [])}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench_models import SPECS
    from gpu_acdc import RUNS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help=f"packed ACDC npz from pack_acdc.py (default {DEFAULT_DATA}; "
                                              "--dry-run without it packs a tiny fake dataset)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "gpu_check"),
                    help="output folder (default $OUT, else runs/gpu_check)")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds for the whole script (default 540)")
    ap.add_argument("--device", help="cuda (default) or cpu (the default with --dry-run)")
    ap.add_argument("--sections", nargs="+", choices=("speed", "acdc", "syncs"), default=["syncs", "speed", "acdc"])
    ap.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), help="ACDC presets to train (default: all)")
    ap.add_argument("--workers", type=int,
                    help="loader workers of each ACDC run (default: the CPUs shared out between the two runs, <= 8)")
    ap.add_argument("--pair-phase-s", type=float,
                    help="seconds of each pair-probe phase (alone, alone, side by side; default 4, dry run 1)")
    ap.add_argument("--val-every", type=int, default=0,
                    help="validate during training every N epochs (default 0: the final weights are evaluated once)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny models, batch 2, 1 iteration, no warm-up; ACDC for 3 iterations on a tiny pack")
    opts = ap.parse_args(argv)
    opts.tiny, opts.precisions = opts.dry_run, ["bf16", "fp32"]
    opts.train_precision = "fp32" if opts.dry_run else "bf16"    # CPU bf16 backward is slow: the dry run's cost
    opts.device = opts.device or ("cpu" if opts.dry_run else "cuda")
    if opts.dry_run:        # one thread: on a shared CPU, spinning threads cost more than they give
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        opts.infer_batch = opts.train_batch = 2
        opts.warmup, opts.iters, opts.max_measure_s, opts.reserve_s = 0, 1, 1.0, 5.0
        opts.pair_phase_s = opts.pair_phase_s or 1.0
    else:
        opts.infer_batch, opts.train_batch = 64, 24
        opts.warmup, opts.iters, opts.max_measure_s, opts.reserve_s = 3, 10, 3.0, 20.0
        opts.pair_phase_s = opts.pair_phase_s or 4.0
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    site = _site_for(opts.data or DEFAULT_DATA)
    rep = Report(opts.out, opts.deadline, sys.argv[1:] if argv is None else list(argv))
    rep.data["dry_run"] = opts.dry_run
    rep.data["vendored_site"] = str(site) if site else None
    rep.log(f"gpu_check: out {opts.out}, deadline {opts.deadline:.0f} s{', DRY RUN' if opts.dry_run else ''}")
    device = None
    with rep.guard("environment"):
        import torch

        try:
            import smaformer  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"cannot import smaformer ({e}); on the device machine run "
                               "benchmarks/pack_acdc.py here first (it copies nibabel into pack/site) and carry "
                               "pack") from e

        device = torch.device(opts.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available (torch " + torch.__version__ + ")")
        rep.data["environment"] = environment(device)
        rep.log(f"device {rep.data['environment'].get('device_name')}, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}")
    rep.save()
    if device is None or "environment" not in rep.data:
        for section in opts.sections:
            rep.skip(section, "no usable device (see errors)")
    else:
        if "syncs" in opts.sections:    # seconds: a host sync in the training step fails here, on the GPU
            step_syncs(rep, opts, device)
            rep.save()
        if "acdc" in opts.sections:     # the answer first: the pair probe, then both runs side by side
            from gpu_acdc import RUNS, acdc, child_env
            from gpu_pair import measure_pair

            if rep.left() < opts.reserve_s:
                rep.skip("pair", f"deadline: {rep.left():.0f} s left")
            else:
                with rep.guard("pair"):
                    measure_pair(rep, opts, {r: RUNS[r] for r in opts.runs or RUNS}, child_env(site))
            rep.save()
            with rep.guard("acdc"):
                acdc(rep, opts, site)
            rep.save()
        else:
            rep.skip("acdc", "not asked for (--sections)")
        if "speed" in opts.sections:
            speed(rep, opts, device)
        else:
            rep.skip("speed", "not asked for (--sections)")
    rep.data["summary"] = summary(rep.data)
    rep.log(f"done in {rep.elapsed():.0f} s: {len(rep.data['errors'])} errors, {len(rep.data['skipped'])} skipped; "
            f"{rep.json_path}")
    rep.save()
    return 1 if rep.data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

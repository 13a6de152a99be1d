"""The first measurement of ``gpu_check.py``: the two ACDC models' training steps alone and side by side on
one GPU. ``gpu_acdc.py`` fits the epochs of the two concurrent ACDC runs to these rates.

Each model trains in its own process, as the two ACDC runs do (two CUDA contexts that the GPU time-slices).
Each process builds its model, warms up (cuDNN autotuning included), says it is ready and waits. The parent
then sets three phases on the wall clock: the first model alone, the second alone, both at once. A phase's
slices/s = batch x steps completed inside it / (end of the last of them - phase start), with a synchronise
after each step (as the speed table). The step is the speed table's: zero_grad, bf16 autocast forward,
cross-entropy, backward, AdamW. Then each process times one checkpoint save (model + optimizer state).

    python benchmarks/gpu_pair.py probe --spec swin_unet --name acdc_swin_unet --dir DIR   # one side
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(BENCH)]
READY_TIMEOUT_S = 150.0     # imports, CUDA context, model build and warm-up of both processes at once


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)


def _wait_for(path: Path, timeout: float) -> dict:
    t_end = time.time() + timeout
    while not path.is_file():
        if time.time() > t_end:
            raise TimeoutError(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.02)
    return json.loads(path.read_text(encoding="utf-8"))


def probe(opts: argparse.Namespace) -> None:
    """One side: build, warm up, report ready, run the phases this side is in, write ``result_<name>.json``."""
    import torch
    import torch.nn.functional as F
    from bench_models import build

    from smaformer.runtime import autocast

    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    model, side = build(opts.spec, opts.tiny)
    model = model.to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(opts.batch, model.in_chans, side, side, device=device)
    y = torch.randint(0, model.num_classes, (opts.batch, side, side), device=device)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with autocast(opts.precision, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optim.step()

    for _ in range(opts.warmup):
        step()
    sync()
    folder = Path(opts.dir)
    _write_json(folder / f"ready_{opts.name}.json", {"pid": os.getpid()})
    go = _wait_for(folder / "go.json", READY_TIMEOUT_S + 60)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    phases = {}
    for ph in go["phases"]:
        if opts.name not in ph["active"]:
            continue
        time.sleep(max(0.0, ph["start"] - time.time()))
        n, last = 0, ph["start"]
        while time.time() < ph["end"]:
            step()
            sync()
            t = time.time()
            if t > ph["end"]:
                break
            n, last = n + 1, t
        seconds = last - ph["start"]
        phases[ph["name"]] = {"steps": n, "seconds": round(seconds, 3),
                              "slices_s": round(opts.batch * n / seconds, 1) if n else None}
    out = {"spec": opts.spec, "batch": opts.batch, "precision": opts.precision, "phases": phases,
           "params": sum(p.numel() for p in model.parameters()),
           "peak_mem_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None}
    path = folder / f"ckpt_{opts.name}.pt"
    t0 = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": optim.state_dict()}, path)
    out["checkpoint_save_s"] = round(time.perf_counter() - t0, 3)
    out["checkpoint_mib"] = round(path.stat().st_size / 2**20, 1)
    path.unlink()
    _write_json(folder / f"result_{opts.name}.json", out)


def measure_pair(rep, opts, runs: dict[str, str], env: dict) -> dict | None:
    """Run both probes (``runs``: run name -> model spec); returns ``rep.data['pair']`` with per run
    ``alone_slices_s``, ``together_slices_s``, peak memory and checkpoint save time, or None when it failed."""
    names = list(runs)
    sec = rep.data["pair"] = {"batch": opts.train_batch, "precision": opts.train_precision,
                              "phase_s": opts.pair_phase_s, "step": "zero_grad, forward, cross-entropy, backward, "
                              "AdamW step; a synchronise after each", "runs": {}}
    folder = Path(tempfile.mkdtemp(prefix="gpu_pair_"))
    procs, logs = {}, {}
    for name in names:
        logs[name] = (folder / f"{name}.log").open("w", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "probe", "--spec", runs[name], "--name", name,
               "--dir", str(folder), "--device", str(opts.device), "--batch", str(opts.train_batch),
               "--precision", opts.train_precision, "--warmup", str(max(1, opts.warmup))]
        procs[name] = subprocess.Popen(cmd + (["--tiny"] if opts.tiny else []), stdout=logs[name],
                                       stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        t_end = time.time() + min(READY_TIMEOUT_S, max(5.0, rep.left()))
        while not all((folder / f"ready_{n}.json").is_file() for n in names):
            failed = [n for n, p in procs.items() if p.poll() is not None]
            if failed or time.time() > t_end:
                raise RuntimeError(f"probe {failed[0]} exited (rc {procs[failed[0]].returncode})" if failed
                                   else f"probes not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        rep.log(f"pair: both models built and warmed up; phases of {opts.pair_phase_s} s")
        t, length = time.time() + 0.2, opts.pair_phase_s
        phases = [{"name": "alone", "active": [n]} for n in names] + [{"name": "together", "active": names}]
        for i, ph in enumerate(phases):
            ph.update(start=t + i * length, end=t + (i + 1) * length)
        _write_json(folder / "go.json", {"phases": phases})
        for name, p in procs.items():
            rc = p.wait(timeout=len(phases) * length + 120)
            if rc != 0:
                raise RuntimeError(f"probe {name} failed (rc {rc})")
        for name in names:
            res = json.loads((folder / f"result_{name}.json").read_text(encoding="utf-8"))
            if not all(res["phases"][ph]["slices_s"] for ph in ("alone", "together")):
                raise RuntimeError(f"probe {name}: no step completed inside a {length} s phase ({res['phases']})")
            sec["runs"][name] = {"model": runs[name], "alone_slices_s": res["phases"]["alone"]["slices_s"],
                                 "together_slices_s": res["phases"]["together"]["slices_s"],
                                 **{k: res[k] for k in ("params", "peak_mem_mib", "checkpoint_save_s",
                                                        "checkpoint_mib")}, "phases": res["phases"]}
        ratio = sum(r["together_slices_s"] / r["alone_slices_s"] for r in sec["runs"].values())
        sec["concurrency"] = round(ratio, 3)
        sec["note"] = ("concurrency = sum over the two models of (slices/s side by side / slices/s alone): 1 means "
                       "side by side is no faster than one after the other, 2 means each ran as fast as alone")
        rep.log("pair: " + ", ".join(f"{n} {r['alone_slices_s']} slices/s alone, {r['together_slices_s']} side by "
                                     f"side" for n, r in sec["runs"].items()) + f"; concurrency {ratio:.2f}")
        return sec
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
                p.wait()
            logs[name].close()
            rep.append_log(folder / f"{name}.log", f"pair probe {name}")
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("probe",))
    ap.add_argument("--spec", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    probe(ap.parse_args(argv))


if __name__ == "__main__":
    main()

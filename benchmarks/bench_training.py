"""Benchmark the GPU-first training changes on the CPU (issue 23): the step, checkpoints, torch.compile.

- ``steps``: training steps/s at batch 8 (128², synthetic slices, no loader workers, 1 thread) and the host
  syncs per 100 steps (Tensor.item / __float__ / __bool__ / __int__ / tolist / numpy called from smaformer's
  code, the sampler's CPU permutation left out), for the loop ``--before`` (a checkout of the commit before
  the change) and the loop now, alternating in rounds; plus the U-Net with and without channels_last.
- ``checkpoint``: at full size (Swin-Unet 224 + SGD, SMAFormer 256 + AdamW) after one step: the seconds an
  epoch end waited for ``latest.pt`` before (snapshot + torch.save + fsync, synchronous) and now (the CPU
  snapshot; the file is written by a thread, and only when ``save_every_s`` is due), and a step's time
  while that thread writes.
- ``channels_last``: an AdamW step at batch 8, 128², channels_last / contiguous, alternating in one process.
- ``compile``: compiled (inductor) / eager for Swin-Unet and SMAFormer at full size: inference at batch 8
  and an AdamW train step at batch 4; the first compiled call's time is the compile time.

    git archive <commit-before> | tar -x -C /tmp/before
    python benchmarks/bench_training.py steps --before /tmp/before
    python benchmarks/bench_training.py checkpoint
    python benchmarks/bench_training.py channels_last --models unet transunet hbformer --repeats 5
    python benchmarks/bench_training.py compile --repeats 3

Each prints one JSON line per row with the CPU description and the 1-minute load; ratios are measured inside
one process (``steps``: alternating subprocesses) because the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL_SWIN = {"embed_dim": 32, "num_heads": [1, 2, 4, 8], "window_size": 8}
SYNCS = ("item", "__float__", "__bool__", "__int__", "tolist", "numpy")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _slices(n: int, size: int, classes: int = 4):
    """``n`` random slices with blob labels, as TrainData wants them (no reader, no augmentation)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    y = (x[:, 0] * classes).long().clamp_(max=classes - 1)
    return [{"image": x[i], "label": y[i]} for i in range(n)]


def _data(n: int, size: int):
    from smaformer.checkpoint import default_preprocessing
    from smaformer.train.data import TrainData

    return TrainData(_slices(n, size), [], ["bg", "a", "b", "c"], default_preprocessing((size, size), 3, "repeat"))


def steps_child(model: str, steps: int, channels_last: str) -> dict:
    """In a subprocess whose PYTHONPATH is the tree under test: train ``steps`` + 3 steps, time the last ones."""
    import smaformer
    from smaformer.config import load_config
    from smaformer.train import loop

    torch.set_num_threads(1)
    kwargs = SMALL_SWIN if model == "swin_unet" else {}
    sets = ["data.img_size=128", f"model.name={model}", f"model.kwargs={json.dumps(kwargs)}", "train.batch_size=8",
            "data.num_workers=0", "train.val_every=0", "train.tensorboard=false", "train.save_every_iters=0",
            f"train.max_iterations={steps + 3}", "train.epochs=1000", "train.device=cpu"]
    if channels_last != "default":
        sets.append(f"train.channels_last={channels_last}")
    cfg = load_config("acdc_swin_unet", sets)
    package, calls, stamps, fitting = str(Path(smaformer.__file__).parent), [0], [], [False]

    def counting(original):
        def method(self, *args, **kwargs):
            code = sys._getframe(1).f_code
            if fitting[0] and code.co_filename.startswith(package) and not code.co_filename.endswith("sampling.py"):
                calls[0] += 1
            return original(self, *args, **kwargs)
        return method

    for name in SYNCS:
        setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    step = loop.Trainer._step

    def timed_step(self, micro):
        out = step(self, micro)
        stamps.append(time.perf_counter())
        return out

    loop.Trainer._step = timed_step
    fit = loop.Trainer.fit

    def counted_fit(self, *args, **kwargs):      # not the model's construction (Swin's drop-path rates)
        fitting[0] = True
        try:
            return fit(self, *args, **kwargs)
        finally:
            fitting[0] = False

    loop.Trainer.fit = counted_fit
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        res = loop.train(cfg, run_dir=Path(tmp) / "run", data=_data(8 * (steps + 3), 128), progress_bar=False,
                         log=lambda *a, **k: None)
    assert res.iterations == steps + 3
    return {"steps_s": (len(stamps) - 3) / (stamps[-1] - stamps[2]), "syncs_per_100": 100 * calls[0] / res.iterations}


def steps(before: Path, rounds: int, n: int) -> None:
    variants = [("swin_unet", "default", "before", before), ("swin_unet", "default", "now", REPO),
                ("unet", "false", "before", before), ("unet", "false", "now", REPO),
                ("unet", "true", "now", REPO)]
    rows: dict[tuple, list] = {}
    for r in range(rounds):
        for model, cl, which, tree in variants:
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "_steps_child", model, str(n), cl]
            out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            rows.setdefault((model, cl, which), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} {model} cl={cl} {which}: {rows[(model, cl, which)][-1]}  load {_load()}", flush=True)
    for key, vals in rows.items():
        print(json.dumps({"model": key[0], "channels_last": key[1], "loop": key[2], "rounds": len(vals),
                          "steps_s": [round(v["steps_s"], 3) for v in vals],
                          "syncs_per_100": vals[0]["syncs_per_100"], "load": _load()}), flush=True)


def checkpoint(repeats: int) -> None:
    from smaformer.checkpoint import build_checkpoint, save_checkpoint
    from smaformer.config import load_config
    from smaformer.train import trainer_session
    from smaformer.train.sampling import capture_rng

    torch.set_num_threads(1)
    import tempfile
    for preset in ("acdc_swin_unet", "acdc_smaformer"):
        cfg = load_config(preset, ["data.num_workers=0", "train.batch_size=2", "train.device=cpu",
                                   "train.tensorboard=false", "train.val_every=0"])
        size = cfg["data"]["img_size"][0]
        with tempfile.TemporaryDirectory() as tmp, trainer_session(cfg, run_dir=Path(tmp), data=_data(4, size),
                                                                   progress_bar=False, log=lambda *a: None) as tr:
            Path(tmp).mkdir(exist_ok=True)
            batch = {"image": torch.rand(2, 3, size, size), "label": torch.randint(0, 4, (2, size, size))}
            tr._step([batch])                      # the optimizer state exists, as after any step
            old, new, write, step_alone, step_writing = [], [], [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()           # before: the epoch end built and wrote latest.pt itself
                ckpt = build_checkpoint(tr.model, tr.classes, tr.data.preprocessing, tr.cfg,
                                        tr._train_state([capture_rng()]))
                save_checkpoint(ckpt, Path(tmp) / "old.pt")
                old.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tr._step([batch])
                step_alone.append(time.perf_counter() - t0)
                t0 = time.perf_counter()           # now: snapshot, then a thread writes while training goes on
                tr.save()
                new.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tr._step([batch])
                step_writing.append(time.perf_counter() - t0)
                tr.writer.wait()
                write.append(tr.writer.last_s)
            mb = (Path(tmp) / "latest.pt").stat().st_size / 2 ** 20
        med = statistics.median
        print(json.dumps({"preset": preset, "model": cfg["model"]["name"], "optimizer": cfg["optim"]["name"],
                          "file_mib": round(mb, 1), "before_epoch_end_s": round(med(old), 3),
                          "now_epoch_end_s_when_due": round(med(new), 3), "now_epoch_end_s_not_due": 0.0,
                          "background_write_s": round(med(write), 3), "step_s": round(med(step_alone), 3),
                          "step_s_while_writing": round(med(step_writing), 3), "repeats": repeats,
                          "load": _load()}), flush=True)


def channels_last(repeats: int, models: list[str]) -> None:
    """An AdamW train step at batch 8, 128², channels_last / contiguous, alternating in one process."""
    from smaformer.models import create_model

    torch.set_num_threads(1)
    for name in models:
        torch.manual_seed(0)
        x, y = torch.rand(8, 3, 128, 128), torch.randint(0, 4, (8, 128, 128))
        nets = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = create_model(name, num_classes=4, img_size=128).to(memory_format=fmt).train()
            nets[fmt] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        times: dict = {fmt: [] for fmt in nets}
        for r in range(repeats + 1):
            for fmt, (model, opt) in nets.items():
                t0 = time.perf_counter()
                torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=fmt)), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if r:                             # the first round warms up
                    times[fmt].append(time.perf_counter() - t0)
        ratios = [c / p for c, p in zip(times[torch.channels_last], times[torch.contiguous_format], strict=True)]
        print(json.dumps({"model": name, "batch": 8, "img_size": 128,
                          "contiguous_s": round(statistics.median(times[torch.contiguous_format]), 3),
                          "channels_last_s": round(statistics.median(times[torch.channels_last]), 3),
                          "channels_last_over_contiguous": round(statistics.median(ratios), 3),
                          "repeats": repeats, "load": _load()}), flush=True)


def compile_bench(repeats: int, models: list[str], phases: list[str]) -> None:
    from smaformer.models import create_model

    torch.set_num_threads(1)
    for name in models:
        size = 256 if name == "smaformer" else 224
        for phase, batch in (("inference", 8), ("train", 4)):
            if phase not in phases:
                continue
            torch.manual_seed(0)
            model = create_model(name, num_classes=4, img_size=size)
            x = torch.rand(batch, 3, size, size)
            y = torch.randint(0, 4, (batch, size, size))
            if phase == "inference":
                model.eval()

                def run(m, x=x):
                    with torch.inference_mode():
                        m(x)
            else:
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                def run(m, opt=opt, x=x, y=y):
                    loss = torch.nn.functional.cross_entropy(m(x), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            run(compiled)
            first = time.perf_counter() - t0
            eager, comp = [], []
            run(model)
            for _ in range(repeats):            # alternate, so load changes hit both alike
                for fn, out in ((model, eager), (compiled, comp)):
                    t0 = time.perf_counter()
                    run(fn)
                    out.append(time.perf_counter() - t0)
            ratios = [c / e for c, e in zip(comp, eager, strict=True)]
            print(json.dumps({"model": name, "img_size": size, "phase": phase, "batch": batch,
                              "eager_s": round(statistics.median(eager), 3),
                              "compiled_s": round(statistics.median(comp), 3),
                              "compiled_over_eager": round(statistics.median(ratios), 3),
                              "first_call_s": round(first, 1), "repeats": repeats, "load": _load()}), flush=True)
            torch._dynamo.reset()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_steps_child":
        print(json.dumps(steps_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=("steps", "checkpoint", "channels_last", "compile"))
    ap.add_argument("--before", type=Path, help="steps: a checkout of the tree before the change")
    ap.add_argument("--rounds", type=int, default=2, help="steps: alternating rounds")
    ap.add_argument("--steps", type=int, default=15, help="steps: timed steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["swin_unet", "smaformer"], help="compile, channels_last: models")
    ap.add_argument("--phases", nargs="+", default=["inference", "train"], choices=("inference", "train"),
                    help="compile: inference at batch 8, train step at batch 4")
    args = ap.parse_args()
    from smaformer.runtime import cpu_description

    print(json.dumps({"cpu": cpu_description(), "torch": torch.__version__, "load": _load(),
                      "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}), flush=True)
    if args.section == "steps":
        if args.before is None:
            ap.error("steps needs --before <checkout of the tree before the change>")
        steps(args.before, args.rounds, args.steps)
    elif args.section == "checkpoint":
        checkpoint(args.repeats)
    elif args.section == "channels_last":
        channels_last(args.repeats, args.models)
    else:
        compile_bench(args.repeats, args.models, args.phases)


if __name__ == "__main__":
    main()

"""The plan of a run (``smaformer train --dry-run``): model, data, schedule, precision and run folder."""
from __future__ import annotations

import time

import torch

from smaformer.runtime import autocast
from smaformer.train.folds import describe_fold
from smaformer.train.loop import Trainer


def _ms(fn, repeats: int = 3) -> float:
    fn()                                        # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - t0) / repeats


def teacher_cost(tr: Trainer) -> str:
    """The teacher's forward per step beside the student's forward+backward, timed on one training batch."""
    teacher = tr.objective.teacher
    items = [tr.data.train[i % len(tr.data.train)] for i in range(tr.batch)]
    x = torch.stack([it["image"] for it in items]).to(tr.device).contiguous(memory_format=tr.memory_format)
    y = torch.stack([it["label"] for it in items]).to(tr.device)

    def sync():
        if tr.device.type == "cuda":
            torch.cuda.synchronize(tr.device)

    def teach():
        with autocast(tr.precision, tr.device):
            teacher(x)
        sync()

    def student():
        with autocast(tr.precision, tr.device):
            loss = tr.objective.loss(tr.model(x), y)
        loss.backward()
        tr.model.zero_grad(set_to_none=True)
        sync()

    t, s = _ms(teach), _ms(student)
    paths = ", ".join(tr.cfg["distill"]["teachers"])
    return (f"teacher    {len(teacher.members)} checkpoint(s) {paths}: {t:.0f} ms per step of {tr.batch} "
            f"(student forward+backward {s:.0f} ms: +{100 * t / s:.0f}%), timed here on one batch")


def describe(tr: Trainer) -> str:
    """The plan of a run: model, data, schedule and precision."""
    cfg, n_params = tr.cfg, sum(p.numel() for p in tr.model.parameters())
    val = tr.data.val
    n_val = len(val.cases()) if hasattr(val, "cases") else len(val or [])
    lines = [
        f"model      {cfg['model']['name']} {cfg['model']['kwargs']}  ({n_params / 1e6:.2f}M params)",
        f"classes    {', '.join(tr.classes)}",
        f"data       {cfg['data']['layout']} {cfg['data']['root'] or ''}: {len(tr.data.train)} training slices, "
        f"{n_val} validation cases",
        *([f"folds      {fold}"] if (fold := describe_fold(tr.data.splits)) else []),
        f"input      {tr.data.preprocessing}",
        f"optimizer  {cfg['optim']['name']} lr {tr.scheduler.base[0]:.3g} wd {cfg['optim']['weight_decay']}, "
        f"{cfg['schedule']['name']} schedule, {cfg['schedule']['warmup_iters']} warm-up steps",
        f"steps      {tr.steps_per_epoch}/epoch x {tr.epochs} epochs = {tr.total_steps} iterations "
        f"(batch {tr.batch} x accum {tr.accum} x {tr.dist.world_size} rank(s))",
        f"loss       {cfg['loss']}",
        f"device     {tr.device}, precision {tr.precision}, channels_last "
        f"{tr.memory_format == torch.channels_last}, compile {cfg['train']['compile']}, "
        f"latest.pt every {cfg['train']['save_every_s']} s (at an epoch end)",
        f"run folder {tr.run_dir}",
    ]
    if hasattr(tr.objective, "teacher"):
        d = cfg["distill"]
        lines.insert(-2, f"distill    weight {d['weight']} (ramp {d['ramp_iters']} steps): soft {d['soft']} "
                         f"(T {d['temperature']}, balanced {d['balanced']}), hard {d['hard']}, dice {d['dice']}")
        lines.insert(-2, teacher_cost(tr))
    return "\n".join(lines)

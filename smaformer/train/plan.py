"""The plan of a run (``smaformer train --dry-run``): model, data, schedule, precision and run folder."""
from __future__ import annotations

import torch

from smaformer.train.folds import describe_fold
from smaformer.train.loop import Trainer


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
    return "\n".join(lines)

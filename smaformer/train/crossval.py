"""The end of a run: its validation cases (a cross-validation fold's, or the validation split) scored by
the evaluation code, and the post-processing chosen on them.

``final_validation(data, run_dir, ...)`` evaluates the run's ``best.pt`` (``latest.pt`` when no validation ever
improved) on the validation reader with ``infer.evaluate.evaluate``, so ``<run>/validation/`` holds
``metrics.json`` (per case and per class, both conventions), ``summary.csv`` and ``report.html``, as
nnU-Net's ``fold_K/validation``. The raw predictions also decide, per class, whether keeping the largest
component or dropping small ones helps Dice (``--choose-postprocessing``); the decision is stored in that
checkpoint, which ``predict`` then applies. The loop calls it on the main rank only.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from smaformer.infer.evaluate import evaluate
from smaformer.infer.postprocess import describe_postprocessing
from smaformer.train.data import TrainData


def final_validation(data: TrainData, run_dir: Path, *, device: torch.device, batch_size: int,
                     log: Callable[[str], None]) -> dict | None:
    """Write ``<run>/validation/metrics.json`` for the run's validation cases, choose and store the
    post-processing; return the metrics dict (None without validation cases). Call it on the main rank."""
    val = data.val
    n_val = len(val.cases()) if hasattr(val, "cases") else len(val or [])
    if not n_val:
        return None
    run = Path(run_dir)
    ckpt = run / "best.pt" if (run / "best.pt").is_file() else run / "latest.pt"
    result = evaluate(ckpt, val, run / "validation", overlays=0, progress=False, choose_postprocessing=True,
                      device=str(device), batch_size=batch_size)
    dice = (result.get("foreground_mean") or {}).get("standard", {}).get("dice")
    score = f"mean Dice {dice:.4f}" if isinstance(dice, float) else "no Dice"
    where = "validation" if data.splits is None else f"fold {data.splits.fold} validation"
    log(f"{where} ({ckpt.name}, {result['data']['n_cases']} cases): {score} -> "
        f"{run / 'validation' / 'metrics.json'}; post-processing {describe_postprocessing(result['postprocessing'])}")
    return result

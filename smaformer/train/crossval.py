"""The end of a cross-validation run: the fold's validation cases scored by the evaluation code.

``final_validation(trainer)`` evaluates the run's ``best.pt`` (``latest.pt`` when no validation ever
improved) on the fold's validation reader with ``infer.evaluate.evaluate``, so ``<run>/validation/`` holds
``metrics.json`` (per case and per class, both conventions), ``summary.csv`` and ``report.html``, as
nnU-Net's ``fold_K/validation``. It runs on the main rank only.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smaformer.train.loop import Trainer


def final_validation(trainer: Trainer) -> dict | None:
    """Write ``<run>/validation/metrics.json`` for the fold's validation cases; return the metrics dict."""
    from smaformer.infer.evaluate import evaluate

    if trainer.data.splits is None or not trainer.dist.main:
        return None
    run = Path(trainer.run_dir)
    ckpt = run / "best.pt" if (run / "best.pt").is_file() else run / "latest.pt"
    result = evaluate(ckpt, trainer.data.val, run / "validation", overlays=0, progress=False,
                      device=str(trainer.device), batch_size=int(trainer.cfg["train"]["val_batch_size"]))
    dice = (result.get("foreground_mean") or {}).get("standard", {}).get("dice")
    score = f"mean Dice {dice:.4f}" if isinstance(dice, float) else "no Dice"
    trainer.log(f"fold {trainer.data.splits.fold} validation ({ckpt.name}, {result['data']['n_cases']} cases): "
                f"{score} -> {run / 'validation' / 'metrics.json'}")
    return result

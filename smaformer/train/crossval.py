"""The end of a run: its validation cases (a cross-validation fold's, or the validation split) scored by
the evaluation code, and the post-processing chosen on them.

``final_validation(trainer)`` evaluates the run's ``best.pt`` (``latest.pt`` when no validation ever
improved) on the validation reader with ``infer.evaluate.evaluate``, so ``<run>/validation/`` holds
``metrics.json`` (per case and per class, both conventions), ``summary.csv`` and ``report.html``, as
nnU-Net's ``fold_K/validation``. The raw predictions also decide, per class, whether keeping the largest
component or dropping small ones helps Dice (``--choose-postprocessing``); the decision is stored in that
checkpoint, which ``predict`` then applies. It runs on the main rank only.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smaformer.train.loop import Trainer


def final_validation(trainer: Trainer) -> dict | None:
    """Write ``<run>/validation/metrics.json`` for the run's validation cases, choose and store the
    post-processing; return the metrics dict (None without validation cases, and on other ranks)."""
    from smaformer.infer.evaluate import evaluate
    from smaformer.infer.postprocess import describe_postprocessing

    val = trainer.data.val
    n_val = len(val.cases()) if hasattr(val, "cases") else len(val or [])
    if not trainer.dist.main or not n_val:
        return None
    run = Path(trainer.run_dir)
    ckpt = run / "best.pt" if (run / "best.pt").is_file() else run / "latest.pt"
    result = evaluate(ckpt, val, run / "validation", overlays=0, progress=False, choose_postprocessing=True,
                      device=str(trainer.device), batch_size=int(trainer.cfg["train"]["val_batch_size"]))
    dice = (result.get("foreground_mean") or {}).get("standard", {}).get("dice")
    score = f"mean Dice {dice:.4f}" if isinstance(dice, float) else "no Dice"
    where = "validation" if trainer.data.splits is None else f"fold {trainer.data.splits.fold} validation"
    trainer.log(f"{where} ({ckpt.name}, {result['data']['n_cases']} cases): "
                f"{score} -> {run / 'validation' / 'metrics.json'}; post-processing "
                f"{describe_postprocessing(result['postprocessing'])}")
    return result

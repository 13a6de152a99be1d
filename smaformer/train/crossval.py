"""The end of a run: its validation cases (a cross-validation fold's, or the validation split) scored by
the evaluation code, and the post-processing chosen on them.

``final_validation(data, run_dir, ...)`` evaluates the run's **final** weights (``latest.pt``) on the
validation reader with ``infer.evaluate.evaluate``, so ``<run>/validation/`` holds ``metrics.json`` (per case
and per class, both conventions), ``summary.csv`` and ``report.html``, as nnU-Net's ``fold_K/validation``. The
final weights, not ``best.pt``: best was selected on these same cases, so its score is optimistic, and so would
be a post-processing choice and a cross-validation summary built on it (nnU-Net validates the final
checkpoint for this reason). ``metrics.json`` says what it scored under ``scored``. The raw predictions
also decide, per class, whether keeping the largest component or dropping small ones helps Dice
(``--choose-postprocessing``); the decision is stored in ``latest.pt``, which ``predict`` then applies.

With ``train.validate_best`` (default on) and a ``best.pt`` of other weights, best is scored too, into
``validation/best/`` with its own post-processing choice stored in ``best.pt``, and both scores are
logged and recorded side by side (``best`` in ``validation/metrics.json``). The loop calls it on the main
rank only.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from smaformer.checkpoint import read_checkpoint, store_postprocessing
from smaformer.infer.evaluate import evaluate
from smaformer.infer.postprocess import describe_postprocessing
from smaformer.io_utils import write_text
from smaformer.train.data import TrainData


def _mean_dice(result: dict) -> float | None:
    dice = (result.get("foreground_mean") or {}).get("standard", {}).get("dice")
    return dice if isinstance(dice, float) else None


def _score(dice: float | None) -> str:
    return "no Dice" if dice is None else f"mean Dice {dice:.4f}"


def final_validation(data: TrainData, run_dir: Path, *, device: torch.device, batch_size: int, iteration: int,
                     validate_best: bool, log: Callable[[str], None]) -> dict | None:
    """Write ``<run>/validation/metrics.json`` for the run's final weights on its validation cases, choose
    and store the post-processing (and score ``best.pt`` beside it); return the metrics dict (None without
    validation cases). Call it on the main rank."""
    val = data.val
    n_val = len(val.cases()) if hasattr(val, "cases") else len(val or [])
    if not n_val:
        return None
    run = Path(run_dir)
    kwargs = {"overlays": 0, "progress": False, "choose_postprocessing": True, "device": str(device),
              "batch_size": batch_size}
    final, best = run / "latest.pt", run / "best.pt"
    result = evaluate(final, val, run / "validation", **kwargs)
    result["scored"] = {"checkpoint": "final", "file": final.name, "iteration": iteration}
    where = "validation" if data.splits is None else f"fold {data.splits.fold} validation"
    log(f"{where} of the final weights ({final.name}, iteration {iteration}, {result['data']['n_cases']} cases): "
        f"{_score(_mean_dice(result))} -> {run / 'validation' / 'metrics.json'}; post-processing "
        f"{describe_postprocessing(result['postprocessing'])}")
    if best.is_file():
        best_it = int((read_checkpoint(best).get("train_state") or {}).get("iteration", -1))
        if best_it == iteration:    # the same weights: the same choice
            if (decision := read_checkpoint(final).get("postprocessing")) is not None:
                store_postprocessing(best, decision)
            result["best"] = {"file": best.name, "iteration": best_it, "same_weights_as": final.name}
        elif validate_best:
            other = evaluate(best, val, run / "validation" / "best", **kwargs)
            result["best"] = {"file": best.name, "iteration": best_it, "metrics": "best/metrics.json",
                              "foreground_mean": other.get("foreground_mean"),
                              "postprocessing": describe_postprocessing(other["postprocessing"])}
            log(f"{where} of best.pt (iteration {best_it}, selected on these cases, so optimistic): "
                f"{_score(_mean_dice(other))} beside the final weights' {_score(_mean_dice(result))}")
    write_text(run / "validation" / "metrics.json", json.dumps(result, indent=1, default=str))
    return result

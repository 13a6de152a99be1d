"""Run-folder logging: ``train_log.csv``, ``curves.png``, TensorBoard (when installed) and the progress bar.

The epoch history lives in the checkpoint, and the CSV and the plot are rewritten from it atomically,
so a run killed at any moment and resumed never has duplicated or missing rows.
"""
from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from tqdm import tqdm

from smaformer.io_utils import write_bytes, write_text


def write_csv(history: list[dict], path: Path, classes: list[str]) -> None:
    """One row per epoch: epoch, iterations, lr, train loss, per-class and mean val Dice, time."""
    cols = ["epoch", "iterations", "lr", "train_loss"] + [f"dice_{c}" for c in classes[1:]] + ["mean_dice",
                                                                                                "epoch_s", "elapsed_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def plot_curves(history: list[dict], path: Path, classes: list[str]) -> None:
    """Loss and validation Dice against epochs (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", ms=3)
    a.set(xlabel="epoch", ylabel="train loss", title="training loss")
    a.grid(alpha=0.3)
    val = [r for r in history if not math.isnan(r.get("mean_dice", math.nan))]
    if val:
        for c in classes[1:]:
            b.plot([r["epoch"] for r in val], [r[f"dice_{c}"] for r in val], lw=1, alpha=0.7, label=c)
        b.plot([r["epoch"] for r in val], [r["mean_dice"] for r in val], "k-", lw=2, label="mean")
        b.legend(fontsize=7, ncol=2)
    else:
        b.text(0.5, 0.5, "no validation", ha="center", va="center", transform=b.transAxes)
    b.set(xlabel="epoch", ylabel="Dice", title="validation Dice (volume level)", ylim=(0, 1))
    b.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


class TensorBoard:
    """A SummaryWriter when tensorboard is installed, else a no-op."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def scalars(self, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and k != "epoch":
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress(total: int, initial: int, enabled: bool) -> tqdm:
    """Iteration bar (shows ETA); disabled when stderr is not a terminal or on non-zero ranks."""
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, leave=False,
                disable=not (enabled and sys.stderr.isatty()))

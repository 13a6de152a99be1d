"""Run-folder logging: ``train_log.csv``, ``curves.png``, TensorBoard (when installed) and the progress bar.

The epoch history lives in the checkpoint, and the CSV and the plot are rewritten from it atomically,
so a run killed at any moment and resumed never has duplicated or missing rows.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
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
    """A SummaryWriter when asked for and tensorboard is installed, else a no-op (with a warning if asked for)."""

    def __init__(self, run_dir: Path, enabled: bool, log=print):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log("warning: train.tensorboard is true but tensorboard is not installed (pip install tensorboard); "
                    "no TensorBoard logs are written")
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


class PlainProgress:
    """Progress for pipes and batch schedulers: a plain line (iteration, loss, it/s, ETA) once the run
    starts and then at most every ``every`` seconds, instead of a bar that only a terminal can show."""

    def __init__(self, total: int, initial: int, log=print, every: float = 30.0, clock=time.monotonic):
        self.total, self.n, self.log, self.every, self.clock = total, initial, log, every, clock
        self.n0, self.t0, self.last = initial, clock(), None
        self.postfix: dict = {}

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def update(self, k: int = 1) -> None:
        self.n += k
        now = self.clock()
        if self.last is not None and now - self.last < self.every and self.n < self.total:
            return
        self.last = now
        rate = (self.n - self.n0) / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        extra = "".join(f"  {k} {v}" for k, v in self.postfix.items())
        self.log(f"it {self.n}/{self.total}{extra}  {rate:.2f} it/s  ETA {_hms(eta)}")

    def close(self) -> None:
        pass


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress(total: int, initial: int, enabled: bool, log=print) -> tqdm | PlainProgress:
    """A bar with ETA on a terminal, plain lines elsewhere (``PlainProgress``); nothing when disabled
    (``--no-progress``, non-zero ranks)."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, initial, log)
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, leave=False, disable=not enabled)

"""Checkpoints written in the background, so the next epoch starts while the file is written.

``cpu_snapshot`` copies every tensor of a checkpoint to new CPU memory (on a GPU that is the one
device-to-host copy of a save; on the CPU it is a clone, because training goes on changing the live
tensors in place). ``BackgroundWriter`` then serialises the snapshot in a thread: one write at a time
(a new one first waits for the last), and ``wait`` before the process exits. Files are written
atomically (temp file, then rename), so a kill never leaves a half-written ``latest.pt``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from smaformer.checkpoint import save_checkpoint


def cpu_snapshot(obj):
    """``obj`` with every tensor replaced by a CPU copy that shares no memory with it (containers copied)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes ``[(checkpoint, path), ...]`` in a daemon thread, never two batches at once."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_s = 0.0          # seconds the last batch took to write (for the log and benchmarks)

    def submit(self, jobs: list[tuple[dict, Path]]) -> None:
        """Start writing ``jobs`` (already snapshots) once the previous batch is on disk."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(jobs,), name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _write(self, jobs: list[tuple[dict, Path]]) -> None:
        t0 = time.perf_counter()
        try:
            for ckpt, path in jobs:
                save_checkpoint(ckpt, path)
        except BaseException as e:   # noqa: BLE001 - handed to the training thread by wait()
            self._error = e
        self.last_s = time.perf_counter() - t0

    def wait(self) -> None:
        """Block until the last batch is written; re-raise its error in the caller's thread."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

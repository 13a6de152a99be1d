"""Errors a user can act on. The CLI prints them as one line (``--debug`` shows the traceback)."""
from __future__ import annotations

from pathlib import Path


class SmaformerError(Exception):
    """Base class for every error the toolkit raises on purpose."""


class InputError(SmaformerError):
    """Bad input: names the file and the fault, e.g. ``case01.nii.gz: label value 9 outside 0..8``."""

    def __init__(self, path: str | Path | None, fault: str):
        self.path = None if path is None else str(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}" if self.path else fault)


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely or does not describe its model."""

"""Errors a user can act on. The CLI prints them as one line (``--debug`` shows the traceback)."""
from __future__ import annotations

import difflib
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


class DivergedError(SmaformerError, FloatingPointError):
    """Training met a non-finite loss (the CLI prints it as one line; the last checkpoint is kept)."""


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``: how a library's exception is quoted in a one-line fault."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__

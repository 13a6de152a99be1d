"""One reader per dataset layout, layout auto-detection and ``open_dataset``.

A layout module defines a :class:`~smaformer.data.sample.Reader` subclass and decorates it with
``@register_layout`` (from ``base``, so that the layout modules never import this package back). Detection
tries layouts in registration order (most specific first) and looks at file names only, so it is cheap.
"""
from __future__ import annotations

from pathlib import Path

from smaformer.data.formats.base import LAYOUTS, register_layout  # noqa: F401 - the registry, re-exported
from smaformer.data.sample import Reader
from smaformer.errors import InputError, did_you_mean


def detect_layout(path: str | Path) -> str:
    """Name of the first registered layout that recognises ``path``; InputError when none does."""
    root = Path(path)
    if not root.exists():
        raise InputError(root, "dataset path not found")
    if root.is_dir() and not any(root.iterdir()):
        raise InputError(root, "empty folder")
    for name, cls in sorted(LAYOUTS.items(), key=lambda kv: kv[1].detect_priority):
        if cls.detect(root):
            return name
    raise InputError(root, f"unrecognised dataset layout; known layouts: {', '.join(LAYOUTS)} "
                           "(pass --layout to choose one)")


def open_dataset(path: str | Path, layout: str | None = None, split: str | None = None, **kwargs) -> Reader:
    """Open a dataset folder as a reader (``.cases()``, ``.load_case(case) -> Sample``).

    ``layout`` defaults to auto-detection; ``split`` to the layout's first split (usually ``train``).
    """
    name = layout or detect_layout(path)
    if name not in LAYOUTS:
        raise InputError(path, f"unknown layout {name!r}{did_you_mean(name, LAYOUTS)}; use one of "
                               f"{', '.join(LAYOUTS)}")
    return LAYOUTS[name](path, split=split, **kwargs)


# most specific first: a Synapse or nnU-Net root may also contain folders a generic layout would match
from smaformer.data.formats import (  # noqa: E402, F401, I001
    acdc, synapse, nnunet, lits, drive, medt, image_folder,
)

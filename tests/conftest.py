"""Shared fixtures. Golden and real-data tests read ../shared and skip, saying why, when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (set SMAFORMER_SHARED to the shared folder)")
    return path


@pytest.fixture
def golden_dir():
    """``../shared/golden``; skips when absent."""
    return _need(GOLDEN)


@pytest.fixture
def data_dir():
    """``../shared/data``; skips when absent."""
    return _need(DATA)


@pytest.fixture(scope="session")
def shared_data_dir():
    """``data_dir`` for module- and session-scoped fixtures."""
    return _need(DATA)

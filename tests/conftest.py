"""Shared fixtures. Golden and real-data tests read ../shared and skip, saying why, when it is absent.

``SMAFORMER_REQUIRE_SHARED=1`` (set by ``.ci/run``, where the folder must be present) turns those skips into
failures: ``_need`` fails, and any other skip whose reason names a path under the shared folder is reported
as failed (``pytest_runtest_makereport``), so the suite cannot pass without its golden and real-data tests.
"""
from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

REQUIRE_SHARED = os.environ.get("SMAFORMER_REQUIRE_SHARED", "") not in ("", "0")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _need(path: Path) -> Path:
    if not path.exists():
        if REQUIRE_SHARED:
            pytest.fail(f"{path} is absent and SMAFORMER_REQUIRE_SHARED is set (set SMAFORMER_SHARED to the "
                        "shared folder)", pytrace=False)
        pytest.skip(f"{path} is absent (set SMAFORMER_SHARED to the shared folder)")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SMAFORMER_REQUIRE_SHARED, a skip whose reason names the shared folder is a failure."""
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_SHARED and rep.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if str(SHARED) in reason or str(SHARED.resolve()) in reason:
            rep.outcome, rep.longrepr = "failed", f"SMAFORMER_REQUIRE_SHARED is set, so this may not skip: {reason}"


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


@pytest.fixture(autouse=True)
def _keep_locale():
    """SimpleITK's DICOM writer (GDCM), used to build test series, sets the process locale to "C"; Python then
    opens text files as ASCII and torch.compile cannot read its own templates. Every test ends with the
    locale it started with."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)

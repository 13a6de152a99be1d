"""Shared fixtures. Golden and real-data tests read ../shared and skip, saying why, when it is absent.

``SMAFORMER_REQUIRE_SHARED=1`` (set by ``.ci/run``, where the folder must be present) turns those skips into
failures: ``_need`` fails, and any other skip is reported as failed (``pytest_runtest_makereport``) unless its
reason is on the short ``ALLOWED_SKIPS`` list, which the run prints at its end. So CI cannot pass without its
golden, real-data and compile tests.
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


#: the only skips a SMAFORMER_REQUIRE_SHARED run accepts: reason substring -> why it is fine
ALLOWED_SKIPS = {
    "declares compile=False": "the model's export flags say torch.compile cannot take it; nothing to test",
    "chromium not installed": "the architecture page is still checked, without rendering it in a browser",
}
_allowed_seen: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SMAFORMER_REQUIRE_SHARED, a skip is a failure unless ``ALLOWED_SKIPS`` names its reason."""
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_SHARED and rep.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value)
        allowed = next((k for k in ALLOWED_SKIPS if k in reason), None)
        if allowed is None:
            rep.outcome, rep.longrepr = "failed", (f"SMAFORMER_REQUIRE_SHARED is set, so this may not skip (allowed: "
                                                   f"tests/conftest.py ALLOWED_SKIPS): {reason}")
        else:
            _allowed_seen.append((item.nodeid, allowed))


def pytest_terminal_summary(terminalreporter):
    """List the allowed skips of a SMAFORMER_REQUIRE_SHARED run, each with why it is allowed."""
    if _allowed_seen:
        terminalreporter.section("allowed skips (SMAFORMER_REQUIRE_SHARED)")
        for nodeid, key in _allowed_seen:
            terminalreporter.write_line(f"{nodeid}: {key} ({ALLOWED_SKIPS[key]})")


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

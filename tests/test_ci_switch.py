"""``SMAFORMER_REQUIRE_SHARED=1`` (set in .ci/run) turns the skips for a missing shared folder into failures."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# one test that needs ../shared through the data_dir fixture, one that skips by itself naming a shared path
TESTS = ["tests/train/test_folds.py::test_train_fold_dry_run_on_real_acdc",
         "tests/test_gpu_check.py::test_pack_and_check_on_real_files"]


def _pytest(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMAFORMER_SHARED": str(tmp_path / "no_shared"), "PYTHONPATH": str(REPO)}
    env.pop("SMAFORMER_REQUIRE_SHARED", None)
    if require is not None:
        env["SMAFORMER_REQUIRE_SHARED"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_missing_shared_skips_by_default_and_fails_when_required(tmp_path):
    free = _pytest(tmp_path, None)
    assert free.returncode == 0 and "2 skipped" in free.stdout, free.stdout
    ci = _pytest(tmp_path, "1")
    # the fixture's failure is a setup error, the test's own skip a failure: neither passes, neither skips
    assert ci.returncode == 1 and "1 failed, 1 error" in ci.stdout and "skipped" not in ci.stdout, ci.stdout
    assert "SMAFORMER_REQUIRE_SHARED" in ci.stdout and str(tmp_path / "no_shared") in ci.stdout
    assert "2 skipped" in _pytest(tmp_path, "0").stdout
    assert "SMAFORMER_REQUIRE_SHARED=1" in (REPO / ".ci" / "run").read_text()


def test_required_run_fails_any_skip_outside_the_allow_list(tmp_path):
    """Under SMAFORMER_REQUIRE_SHARED, a skip for any other reason (e.g. the compile tests under a non-UTF-8
    locale) fails; an allow-listed one passes and is listed with its reason at the end."""
    import shutil
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_locale():\n    pytest.skip('needs a UTF-8 locale')\n\n"
        "def test_browser():\n    pytest.skip('chromium not installed; checked without rendering')\n", encoding="utf-8")
    env = {**os.environ, "SMAFORMER_REQUIRE_SHARED": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "1 failed" in run.stdout and "1 skipped" in run.stdout, run.stdout
    assert "may not skip" in run.stdout and "needs a UTF-8 locale" in run.stdout
    assert "allowed skips (SMAFORMER_REQUIRE_SHARED)" in run.stdout
    assert "test_browser: chromium not installed" in run.stdout


def test_ci_and_make_set_a_utf8_locale():
    assert "LC_ALL=C.UTF-8" in (REPO / ".ci" / "run").read_text()
    assert "LC_ALL=C.UTF-8" in (REPO / "Makefile").read_text()

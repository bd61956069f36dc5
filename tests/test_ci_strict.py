"""Under ``CI=true`` a missing real part (the CUAD data, headless Chromium) is an error naming what is missing;
locally it is a skip. Shown on a tiny pytest session, in a subprocess, that uses this suite's own helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import under_ci

TINY = """
from conftest import cuad_dir, require_chromium  # noqa: F401  (the suite's fixture and helper)


def test_needs_cuad(cuad_dir):
    pass


def test_needs_chromium():
    require_chromium()
"""


def run_tiny(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """The tiny session with ROLORA_CUAD_DIR on an empty folder and no Chromium on PATH."""
    (tmp_path / "test_tiny.py").write_text(TINY, encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=str(Path(__file__).parent), ROLORA_CUAD_DIR=str(empty), PATH=str(empty), NO_COLOR="1")
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-rA", "-q", "test_tiny.py"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_reads_the_usual_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("true", True), ("1", True), ("TRUE", True), ("", False), ("false", False), ("0", False)):
        monkeypatch.setenv("CI", value)
        assert under_ci() is expected, value
    monkeypatch.delenv("CI")
    assert not under_ci()


def test_missing_real_parts_fail_under_ci_and_skip_locally(tmp_path: Path) -> None:
    strict = run_tiny(tmp_path, "true")
    out = strict.stdout + strict.stderr
    assert strict.returncode == 1, out
    assert "1 failed" in out and "1 error" in out, out  # the fixture errors, the test body fails
    assert "CI=true and a real part is missing: CUAD data not found" in out and "ROLORA_CUAD_DIR" in out
    assert "CI=true and a real part is missing: chromium is not installed" in out and "make browser" in out

    local = run_tiny(tmp_path, None)
    out = local.stdout + local.stderr
    assert local.returncode == 0, out
    assert "2 skipped" in out and "ROLORA_CUAD_DIR" in out and "chromium is not installed" in out

"""The code's own checks, so that CI holds them: ruff (lint and format) and strict mypy over the package, the
benchmarks and these tests, ruff over the examples too (both pinned in the dev extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("src", "benchmarks", "tests")


def check(*tool: str) -> None:
    done = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_ruff_lint_and_format_are_clean() -> None:
    check("ruff", "check", *PATHS, "examples")
    check("ruff", "format", "--check", *PATHS, "examples")


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    check("mypy", *PATHS)

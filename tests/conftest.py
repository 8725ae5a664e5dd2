"""Shared fixtures: real git repositories holding small real tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

NOISY = """\
import os, random
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""

TOML = """\
[task]
name = "quad"
editable = ["train.py"]
frozen = ["frozen.py"]
command = "{python} train.py"
timeout = "20s"

[metric]
name = "loss"
goal = "minimize"
pattern = '^loss:\\s*(\\S+)'
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: with `-n 2` a long test collected last would run alone at the end while the other
    worker idles (the order is the same in every worker, as xdist requires)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def commit_all(root: Path, message: str = "init") -> None:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


MakeTask = Callable[..., Path]


def create_task(root: Path, train: str = NOISY, extra_toml: str = "", files: dict[str, str] | None = None) -> Path:
    """A git repository at `root` with train.py, frozen.py and rsi.toml (extra TOML appended), committed on main."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(train))
    (root / "frozen.py").write_text("VALUE = 1\n")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    toml = TOML.format(python=sys.executable) + textwrap.dedent(extra_toml)
    (root / "rsi.toml").write_text(toml)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    commit_all(root)
    return root


@pytest.fixture
def make_task(tmp_path: Path) -> MakeTask:
    """`create_task` under this test's folder; `name` tells several apart."""

    def make(train: str = NOISY, extra_toml: str = "", files: dict[str, str] | None = None, name: str = "task") -> Path:
        return create_task(tmp_path / name, train, extra_toml, files)

    return make


def rsi(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed CLI, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "rsi", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=600,
    )

"""`rsi demo`: copy a shipped example into a fresh git repository and research it offline, right now."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from rsi.config import parse_duration
from rsi.errors import UserError

EXAMPLES = ("tinygpt", "tabular", "sgd")
NEEDS = {"tinygpt": ("torch", "pip install torch==2.13.0"), "tabular": ("sklearn", "pip install scikit-learn")}
DEMO_BUDGET = "15s"  # per-candidate training: dozens of experiments fit in ten minutes on two cores
_IDENTITY = {
    "GIT_AUTHOR_NAME": "rsi demo",
    "GIT_AUTHOR_EMAIL": "demo@rsi.invalid",
    "GIT_COMMITTER_NAME": "rsi demo",
    "GIT_COMMITTER_EMAIL": "demo@rsi.invalid",
}


def check_requirements(example: str) -> None:
    if example not in EXAMPLES:
        raise UserError(f"unknown example {example!r} (known: {', '.join(EXAMPLES)})")
    module, install = NEEDS.get(example, ("", ""))
    if module and importlib.util.find_spec(module) is None:
        raise UserError(f"the {example} example needs {module}, which is not installed: {install}")


def default_dir(example: str) -> Path:
    return Path.cwd() / f"rsi-demo-{example}-{time.strftime('%Y%m%d-%H%M%S')}"


def create(example: str, dest: Path, budget: str = DEMO_BUDGET) -> Path:
    """A new git repository at `dest` holding the example, committed, with the demo's short budget."""
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty: choose a new --dir")
    source = importlib.resources.files("rsi.examples") / example
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(".pyc"):
            (dest / item.name).write_bytes(item.read_bytes())
    toml = dest / "rsi.toml"
    text = toml.read_text()
    # the interpreter running rsi is the one that has the example's packages
    text = re.sub(r'"python ', f'"{sys.executable} ', text)
    if example == "tinygpt":
        text = re.sub(r'^budget = "[^"]*"', f'budget = "{budget}"', text, flags=re.M)
        # the budget, and two minutes to start and evaluate
        timeout = parse_duration(budget) + 120
        text = re.sub(r'^timeout = "[^"]*"', f'timeout = "{timeout:g}s"', text, flags=re.M)
    toml.write_text(text)
    env = {**os.environ, **_IDENTITY}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"rsi demo: {example}"]):
        subprocess.run(["git", *args], cwd=dest, env=env, check=True, capture_output=True)
    return dest

"""Harness cost of one experiment against a bare `subprocess.run` of the same command.

One experiment is: propose (knobs + CMA-ES), commit the candidate, add a worktree, launch the run under its
limits, parse the metric, check for tampering, judge, record in SQLite, remove the worktree. Both sides run the
same trivial script; the figure is the difference of medians, so machine noise largely cancels.
Target: at most 50 ms of overhead per experiment.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rsi.config import load_config
from rsi.engine import Limits, Research
from rsi.judge import ThresholdJudge
from rsi.ledger import Experiment
from rsi.proposer import KnobsProposer, Proposer
from rsi.store import Store

SCRIPT = "lr = 0.5\nwidth = 8\nprint(f'loss: {(lr - 0.1) ** 2 + (width - 20) ** 2 / 100:.6f}')\n"
TOML = f"""
[task]
name = "overhead"
editable = ["train.py"]
frozen = ["frozen.py"]
command = "{sys.executable} train.py"
timeout = "30s"
memory = "2GB"
[metric]
name = "loss"
goal = "minimize"
pattern = '^loss:\\s*(\\S+)'
[judge]
baseline_repeats = 1
"""


def make_repo(root: Path) -> None:
    (root / "train.py").write_text(SCRIPT)
    (root / "frozen.py").write_text("X = 1\n")
    (root / "rsi.toml").write_text(TOML)
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *cmd], cwd=root, check=True)


def bare(root: Path, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "train.py"], cwd=root, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return times


def harness(root: Path, n: int) -> list[float]:
    stamps: list[float] = []

    def listener(event: str, exp: Experiment | None, message: str) -> None:
        if event == "done" and exp is not None:
            stamps.append(time.perf_counter())

    cfg = load_config(root)

    def factory(ws: Store, start: str) -> Proposer:
        return KnobsProposer({p: ws.read(start, p) for p in ws.files(start, cfg.task.editable)}, cfg.knobs, "minimize")

    # one run per experiment (the threshold rule), so that each interval is one experiment's whole harness cost
    Research(root, cfg, factory, listener=listener, judge=ThresholdJudge()).run(Limits(max_experiments=n + 1))
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 10 s)")
    n = 40 if ap.parse_args().quick else 200
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_repo(root)
        bare(root, 3)  # warm the page cache
        b = bare(root, n)
        h = harness(root, n)
    bare_ms, rsi_ms = statistics.median(b) * 1000, statistics.median(h) * 1000
    overhead = rsi_ms - bare_ms
    print(f"{'':24}{'median ms':>12}{'p90 ms':>10}")
    print(f"{'bare subprocess.run':24}{bare_ms:12.1f}{statistics.quantiles(b, n=10)[-1] * 1000:10.1f}")
    print(f"{'rsi experiment':24}{rsi_ms:12.1f}{statistics.quantiles(h, n=10)[-1] * 1000:10.1f}")
    print(f"{'overhead':24}{overhead:12.1f}      (target <= 50 ms; ratio {rsi_ms / bare_ms:.2f}x)")
    figures = {
        "bare_ms": round(bare_ms, 2),
        "rsi_ms": round(rsi_ms, 2),
        "overhead_ms": round(overhead, 2),
        "ratio": round(rsi_ms / bare_ms, 3),
        "experiments": len(h),
    }
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "figures": figures,
                "target": "overhead_ms <= 50",
                "met": overhead <= 50,
            }
        )
    )


if __name__ == "__main__":
    main()

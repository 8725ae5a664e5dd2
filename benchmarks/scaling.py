"""Throughput of parallel workers: experiments per minute with W = 1, 2, 4, 8 local workers, side by side.

Each candidate is one run that sleeps S seconds, so the 2 cores of a small machine do not bound the figures:
what is measured is what the executor adds (proposing, worktrees, the sandbox, the ledger, the judge) and how
well W workers overlap. The baseline (its code unchanged) runs fast and often enough that the noise floor is
settled from the start; every candidate moves a knob away from the optimum, so the judge decides after its one
run. Throughput is counted from the baseline's end to the last experiment's end.
Target: a speed-up of at least 0.9 x W over one worker, up to W = 8.

    python benchmarks/scaling.py            # S = 3 s, 4 candidates per worker
    python benchmarks/scaling.py --quick    # S = 1.5 s, 3 candidates per worker
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TASK = """\
import os, random, time
lr = 0.5
DEPTH = 3
time.sleep(0.1 if (lr, DEPTH) == (0.5, 3) else {sleep})
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {{1 + abs(lr - 0.5) * 50 + abs(DEPTH - 3) + random.gauss(0, 0.001):.6f}}")
"""

CONFIG = """\
[task]
editable = ["train.py"]
command = "{python} train.py"
timeout = "60s"
[metric]
name = "loss"
goal = "minimize"
pattern = '^loss:\\s*(\\S+)'
[judge]
baseline_repeats = 14
"""


def make_task(root: Path, sleep: float) -> None:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TASK.format(sleep=sleep))
    (root / "rsi.toml").write_text(textwrap.dedent(CONFIG.format(python=sys.executable)))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "task"]):
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=root, check=True)


def measure(workers: int, sleep: float, per_worker: int, where: Path) -> tuple[int, float, int]:
    """(candidates, seconds from the baseline's end to the last experiment's end, their runs)."""
    root = where / f"w{workers}"
    make_task(root, sleep)
    total = 1 + per_worker * workers
    argv = [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", str(total), "--workers", str(workers)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rsi run --workers {workers} failed: {done.stderr[-2000:]}")
    db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
    start = db.execute("SELECT finished FROM experiments WHERE id = 0").fetchone()[0]
    count, end = db.execute("SELECT COUNT(*), MAX(finished) FROM experiments WHERE id > 0").fetchone()
    runs = db.execute("SELECT COUNT(*) FROM runs WHERE experiment > 0").fetchone()[0]
    return int(count), float(end - start), int(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sleep, per_worker = (1.5, 3) if args.quick else (3.0, 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsi-scaling-") as tmp:
        for workers in (1, 2, 4, 8):
            count, seconds, runs = measure(workers, sleep, per_worker, Path(tmp))
            rows.append((workers, count, runs, seconds, count / seconds * 60))
    one = rows[0][4]
    print(f"each candidate: one run of {sleep:g} s; {per_worker} candidates per worker\n")
    print("| workers | experiments | runs | seconds | experiments/min | speed-up | target (0.9 x W) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    met = True
    for workers, count, runs, seconds, rate in rows:
        speedup = rate / one
        ok = speedup >= 0.9 * workers
        met &= ok
        print(
            f"| {workers} | {count} | {runs} | {seconds:.1f} | {rate:.1f} | {speedup:.2f}x | "
            f"{0.9 * workers:.1f}x {'met' if ok else 'NOT met'} |"
        )
    print(f"\nmet: {str(met).lower()}")


if __name__ == "__main__":
    main()

"""Throughput of parallel workers: experiments per minute with W = 1, 2, 4, 8 local workers, side by side.

Each candidate is one run that sleeps S seconds, so the 2 cores of a small machine do not bound the figures:
what is measured is what the executor adds (proposing, worktrees, the sandbox, the ledger, the judge) and how
well W workers overlap. The baseline (its code unchanged) runs fast and often enough that the noise floor is
settled from the start; every candidate moves a knob away from the optimum, so the judge decides after its one
run. Throughput is counted from the baseline's end to the last experiment's end.
Target: a speed-up of at least 0.9 x W over one worker, up to W = 8. The same task then runs through a Ray
cluster started with `ray start` (8 logical CPUs), with 1 and 8 workers: the overhead Ray adds per experiment
(shipping the bundle and the patch, building the worktree on the node) is printed against local workers.

    python benchmarks/scaling.py            # S = 3 s, 4 candidates per worker
    python benchmarks/scaling.py --quick    # S = 2 s, 3 candidates per worker
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
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


def measure(workers: int, sleep: float, per_worker: int, where: Path, ray: bool = False) -> tuple[int, float, int]:
    """(candidates, seconds from the baseline's end to the last experiment's end, their runs)."""
    root = where / f"{'ray' if ray else 'local'}-w{workers}"
    make_task(root, sleep)
    total = 1 + per_worker * workers
    argv = [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", str(total), "--workers", str(workers)]
    if ray:
        argv += ["--executor", "ray", "--address", "auto"]
    env = {**os.environ, "RSI_RAY_DIR": str(where / "nodes")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"rsi run --workers {workers} failed: {done.stderr[-2000:]}")
    db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
    start = db.execute("SELECT finished FROM experiments WHERE id = 0").fetchone()[0]
    count, end = db.execute("SELECT COUNT(*), MAX(finished) FROM experiments WHERE id > 0").fetchone()
    runs = db.execute("SELECT COUNT(*) FROM runs WHERE experiment > 0").fetchone()[0]
    return int(count), float(end - start), int(runs)


@contextlib.contextmanager
def ray_cluster(cpus: int, where: Path) -> Iterator[None]:
    """A Ray head on this machine, as `ray start` makes one; `cpus` logical CPUs, since the runs only sleep."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RSI_RAY_DIR": str(where / "nodes")}
    start = [ray, "start", "--head", f"--num-cpus={cpus}", "--disable-usage-stats", "--include-dashboard=false"]
    subprocess.run(start, check=True, capture_output=True, env=env)
    try:
        yield
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ray", action="store_true", help="local workers only")
    args = parser.parse_args()
    sleep, per_worker = (2.0, 3) if args.quick else (3.0, 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsi-scaling-") as tmp:
        for workers in (1, 2, 4, 8):
            count, seconds, runs = measure(workers, sleep, per_worker, Path(tmp))
            rows.append(("local", workers, count, runs, seconds, count / seconds * 60))
        if not args.no_ray:
            with ray_cluster(8, Path(tmp)):
                for workers in (1, 8):
                    count, seconds, runs = measure(workers, sleep, per_worker, Path(tmp), ray=True)
                    rows.append(("ray", workers, count, runs, seconds, count / seconds * 60))
    one = rows[0][5]
    print(f"each candidate: one run of {sleep:g} s; {per_worker} candidates per worker\n")
    print("| executor | workers | experiments | seconds | experiments/min | speed-up | target (0.9 x W) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    met = True
    for kind, workers, count, _runs, seconds, rate in rows:
        speedup = rate / one
        ok = speedup >= 0.9 * workers
        if kind == "local":
            met &= ok
        verdict = f"{0.9 * workers:.1f}x {'met' if ok else 'NOT met'}" if kind == "local" else "-"
        print(f"| {kind} | {workers} | {count} | {seconds:.1f} | {rate:.1f} | {speedup:.2f}x | {verdict} |")
    local = {w: (c, s) for k, w, c, _, s, _ in rows if k == "local"}
    for kind, workers, count, _runs, seconds, _ in rows:
        if kind == "ray":
            extra = (seconds - local[workers][1]) / count * workers
            print(f"\nRay against local, {workers} worker(s): {extra * 1000:+.0f} ms per experiment")
    print(f"\nmet: {str(met).lower()}")


if __name__ == "__main__":
    main()

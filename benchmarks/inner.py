"""What one inner experiment costs in process (`engine.in_process`), against the floor of the subprocess path.

Inner research of the meta level runs on synthetic tasks that are Python functions: the same loop, proposers,
judge and ledger, with no subprocess and no git. This runs it on the training suite (6 tasks x 3 seeds, 60 runs
each) with the original program (TPE) and the shipped one (CMA-ES), and reports the harness's time per
experiment and per run (the task function's own time is left out), beside the cheapest thing a run could cost
on the subprocess path: starting `python -c pass`, with no worktree, no sandbox and no git.

Target (the meta issue): an inner experiment well under a millisecond.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping

from rsi.engine import Limits, default_judge, in_process
from rsi.meta import inner_config
from rsi.program import Program, default_program, original_text, parse_program
from rsi.proposer import KnobsProposer
from rsi.suite import SyntheticTask, suite


def harness(program: Program, tasks: list[SyntheticTask], seeds: int, budget: int) -> tuple[float, int, int]:
    """Seconds spent outside the task function, experiments and runs, over every (task, seed)."""
    cfg = inner_config(program)
    spent = inside = 0.0
    experiments = runs = 0
    for task in tasks:
        for seed in range(seeds):

            def measure(files: Mapping[str, str], run_seed: int, task: SyntheticTask = task, salt: int = seed) -> float:
                nonlocal inside
                started = time.perf_counter()
                try:
                    return task.measure(files, run_seed, salt=salt)
                finally:
                    inside += time.perf_counter() - started

            started = time.perf_counter()
            proposer = KnobsProposer(task.files(), cfg.knobs, "minimize", seed=seed)
            research = in_process(cfg, task.files(), measure, proposer, judge=default_judge(cfg))
            research.run(Limits(max_runs=budget))
            spent += time.perf_counter() - started
            done = research.ledger.experiments()
            experiments += len(done)
            runs += sum(len(e.runs) for e in done)
    return spent - inside, experiments, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=60)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    tasks = suite("train", args.tasks)
    harness(default_program(), tasks[:1], 1, 20)  # imports and caches warm before anything is timed
    launches = 20
    started = time.perf_counter()
    for _ in range(launches):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    floor = (time.perf_counter() - started) / launches
    heads = f"{'experiments':>11s} {'runs':>6s} {'ms/experiment':>14s} {'ms/run':>8s}"
    print(f"{'program':10s} {heads} {'vs python -c pass':>18s}")
    figures: dict[str, dict[str, float]] = {}
    for name, program in (("original", parse_program(original_text())), ("shipped", default_program())):
        spent, experiments, runs = harness(program, tasks, args.seeds, args.budget)
        per_exp, per_run = spent / experiments * 1000, spent / runs * 1000
        figures[name] = {"ms_per_experiment": per_exp, "ms_per_run": per_run}
        print(f"{name:10s} {experiments:11d} {runs:6d} {per_exp:14.2f} {per_run:8.3f} {floor * 1000 / per_run:17.0f}x")
    print(f"python -c pass: {floor * 1000:.1f} ms per launch (the subprocess path's floor per run)")
    print("target: an inner experiment well under 1 ms")
    print(json.dumps({"floor_ms": floor * 1000, **figures}))


if __name__ == "__main__":
    main()

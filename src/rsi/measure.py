"""Measurement: one run of an experiment's commit, recorded in the ledger before and after.

`SubprocessMeasurer` runs the task's command in the commit's worktree under the harness's limits: a run is a
ledger row `running` (with the pid of its process group once launched) before anything can happen, and
`done` with its status after; the tamper check runs between the two. `FunctionMeasurer` calls a Python
function on the commit's files instead, for tasks that are functions (synthetic tasks, the meta level).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import psutil

from rsi.config import Config
from rsi.environment import describe_environment
from rsi.ledger import Ledger
from rsi.runner import MetricSpec, RunSpec, run, scrub_env
from rsi.store import MemoryStore
from rsi.workspace import Workspace, hash_files

# screening runs of a candidate, its own replication runs, unbiased runs (the champion pool), held-out, verify
SCREEN, CONFIRM, FRESH, HOLDOUT, VERIFY = "screen", "confirm", "fresh", "holdout", "verify"


def fresh_seed(exp_id: int, k: int) -> int:
    """A seed no other experiment uses: experiment i owns 10000*i + 1 ... 10000*i + 9999 (k from 1)."""
    return 10_000 * exp_id + k


class Measurer(Protocol):
    @property
    def has_holdout(self) -> bool:
        """Whether there is a held-out measurement to run for the baseline and for keeps."""
        ...

    def measure(self, wt: Path, exp_id: int, commit: str, kind: str, seed: int) -> None:
        """One recorded run of the experiment's commit (kind HOLDOUT: of the holdout command)."""
        ...

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        """Run the research's setup once; returns "" on success, else why it failed."""
        ...


# A task that is a function: the commit's files and a seed in, the metric out (raise, or None, for a failure).
TaskFunction = Callable[[Mapping[str, str], int], float | None]


class FunctionMeasurer:
    def __init__(self, store: MemoryStore, ledger: Ledger, task: TaskFunction, holdout: TaskFunction | None) -> None:
        self.store, self.ledger, self.task, self.holdout = store, ledger, task, holdout

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None

    def measure(self, wt: Path, exp_id: int, commit: str, kind: str, seed: int) -> None:
        fn = self.holdout if kind == HOLDOUT else self.task
        if fn is None:
            return
        run_id = self.ledger.start_run(exp_id, kind, seed, {"commit": commit})
        status, metric, reason = "ok", None, ""
        try:
            value = fn(self.store.snapshot(commit), seed)
            if value is None:
                status, reason = "no_metric", "the function returned None"
            elif not math.isfinite(value):
                status, reason = "invalid_metric", f"metric is {value}"
            else:
                metric = float(value)
        except Exception as e:  # the candidate's failure, not the harness's
            status, reason = "crash", f"{type(e).__name__}: {e}"
        with self.ledger.transaction():
            self.ledger.finish_run(run_id, status=status, metric=metric, reason=reason, duration_s=0.0)

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        return ""


class SubprocessMeasurer:
    def __init__(self, ws: Workspace, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> None:
        self.ws, self.cfg, self.ledger, self.frozen = ws, cfg, ledger, frozen
        self.cache_dir = ws.state / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.environment = describe_environment()

    @property
    def has_holdout(self) -> bool:
        return self.cfg.holdout is not None

    def metric_spec(self) -> MetricSpec:
        m = self.cfg.metric
        return MetricSpec(pattern=m.pattern, file=m.file, key=m.key, evaluator=m.evaluator)

    def holdout_spec(self) -> MetricSpec | None:
        h = self.cfg.holdout
        return None if h is None else MetricSpec(pattern=h.pattern, file=h.file, key=h.key)

    def environ(self, seed: int) -> dict[str, str]:
        env = scrub_env(os.environ, deny=self.cfg.task.secret_patterns, allow=self.cfg.task.env_pass)
        env.update(self.cfg.task.env)
        env["RSI_SEED"] = str(seed)
        env["RSI_CACHE_DIR"] = str(self.cache_dir)
        if self.cfg.task.budget is not None:
            env["RSI_BUDGET_SECONDS"] = f"{self.cfg.task.budget:g}"
        return env

    def spec(self, wt: Path, command: str, metric: MetricSpec, seed: int, timeout: float, logs: Path) -> RunSpec:
        return RunSpec(
            command=command,
            cwd=wt,
            env=self.environ(seed),
            timeout_s=timeout,
            memory_bytes=self.cfg.task.memory,
            output_cap=self.cfg.task.output_cap,
            log_dir=logs,
            metric=metric,
        )

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        """The setup command is not an experiment: logged, not in the ledger."""
        result = run(self.spec(wt, command, MetricSpec(), 0, timeout, self.ws.state / "logs" / "setup"))
        return "" if result.status == "ok" else result.reason

    def measure(self, wt: Path, exp_id: int, commit: str, kind: str, seed: int) -> None:
        """One recorded run of the task's command (or of the holdout command, for kind HOLDOUT)."""
        if kind == HOLDOUT:
            metric, command = self.holdout_spec(), self.cfg.holdout.command if self.cfg.holdout else ""
            assert metric is not None
        else:
            metric, command = self.metric_spec(), self.cfg.task.command
        logs = self.ws.state / "logs" / str(exp_id) / f"{kind}-{seed}"
        spec = self.spec(wt, command, metric, seed, self.cfg.task.timeout, logs)
        run_id = self.ledger.start_run(exp_id, kind, seed, {**self.environment, "commit": commit})

        def started(pid: int) -> None:
            self.ledger.set_run_pid(run_id, pid, start_time(pid))

        result = run(spec, on_start=started)
        status, reason = result.status, result.reason
        tampered = self.tampering(wt)
        if tampered:
            status, reason = "tampered", tampered
        with self.ledger.transaction():
            self.ledger.finish_run(
                run_id,
                status=status,
                metric=result.metric if status == "ok" else None,
                reason=reason,
                returncode=result.returncode,
                duration_s=result.duration_s,
                peak_memory_mb=result.peak_memory_mb,
                stdout_tail=result.stdout_tail,
                stderr_tail=result.stderr_tail,
            )

    def tampering(self, wt: Path) -> str:
        """A run may write new files, never change tracked ones; frozen files are checked by content too."""
        changed = self.ws.changed_tracked(wt)
        if changed:
            return f"the run changed tracked files: {', '.join(changed[:3])}"
        now = hash_files(wt, self.frozen)
        bad = [p for p, digest in self.frozen.items() if now[p] != digest]
        return f"frozen file changed: {', '.join(bad[:3])}" if bad else ""


def start_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0

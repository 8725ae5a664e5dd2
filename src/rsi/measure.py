"""Measurement: one run of an experiment's commit in its worktree, recorded in the ledger before and after.

A run is a ledger row `running` (with the pid of its process group once launched) before anything can
happen, and `done` with its status after; the tamper check runs between the two. Seeds are chosen here too,
so that repeats differ and comparisons pair up.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from rsi.config import Config
from rsi.environment import describe_environment
from rsi.ledger import Ledger
from rsi.runner import MetricSpec, RunResult, RunSpec, run, scrub_env
from rsi.workspace import Workspace, hash_files

SCREEN, FRESH, HOLDOUT, VERIFY = "screen", "fresh", "holdout", "verify"


def fresh_seed(exp_id: int, k: int) -> int:
    """A seed no other experiment uses: experiment i owns 10000*i + 1 ... 10000*i + 9999 (k from 1)."""
    return 10_000 * exp_id + k


class Measurer:
    def __init__(self, ws: Workspace, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> None:
        self.ws, self.cfg, self.ledger, self.frozen = ws, cfg, ledger, frozen
        self.cache_dir = ws.state / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.environment = describe_environment()

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

    def unrecorded(self, wt: Path, command: str, timeout: float, name: str) -> RunResult:
        """A run that is not an experiment's (the setup command): logged, not in the ledger."""
        return run(self.spec(wt, command, MetricSpec(), 0, timeout, self.ws.state / "logs" / name))

    def measure(self, wt: Path, exp_id: int, commit: str, kind: str, seed: int) -> RunResult:
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
        return result

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

"""Measurement: one run of an experiment's commit, recorded in the ledger before and after.

`SubprocessMeasurer` runs the task's command in the commit's worktree under the harness's limits: a run is a
ledger row `running` (with the pid of its process group once launched) before anything can happen, and
`done` with its status after; the tamper check runs between the two. `FunctionMeasurer` calls a Python
function on the commit's files instead, for tasks that are functions (synthetic tasks, the meta level).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import psutil

from rsi import slots
from rsi.config import Config
from rsi.environment import describe_environment, node_kind
from rsi.ledger import Ledger
from rsi.pruning import Reference, Watch
from rsi.runner import MetricSpec, RunSpec, run, scrub_env
from rsi.sandbox import Bare, Bubblewrap, Limits, Sandbox, View, bubblewrap_path, cgroup_available
from rsi.store import MemoryStore
from rsi.workspace import Workspace, hash_files, is_glob, matches

# screening runs of a candidate, its own replication runs, unbiased runs (the champion pool), held-out, verify
SCREEN, CONFIRM, FRESH, HOLDOUT, VERIFY = "screen", "confirm", "fresh", "holdout", "verify"
SETUP = "setup"  # the research's setup command: not a run of the ledger, but it may write the cache
MEMORY_SHARE = 0.8  # with no [task] memory, a run's tree may use this share of the machine's memory


def default_memory() -> int:
    return int(psutil.virtual_memory().total * MEMORY_SHARE)


def limits(cfg: Config) -> Limits:
    """The kernel limits of every run; CPU time defaults to what the timeout allows on every core."""
    box = cfg.sandbox
    cpu = box.cpu_time if box.cpu_time is not None else cfg.task.timeout * (os.cpu_count() or 1) + 60
    return Limits(processes=box.processes, file_size=box.file_size, cpu_seconds=math.ceil(cpu))


def fresh_seed(exp_id: int, k: int) -> int:
    """A seed no other experiment uses: experiment i owns 10000*i + 1 ... 10000*i + 9999 (k from 1)."""
    return 10_000 * exp_id + k


class Measurer(Protocol):
    @property
    def has_holdout(self) -> bool:
        """Whether there is a held-out measurement to run for the baseline and for keeps."""
        ...

    def measure(
        self, wt: Path, exp_id: int, commit: str, kind: str, seed: int, against: Reference | None = None
    ) -> None:
        """One recorded run of the experiment's commit (kind HOLDOUT: of the holdout command); `against`, the
        champion's trajectories a screening run is stopped early against, where the measurer can."""
        ...

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        """Run the research's setup once; returns "" on success, else why it failed."""
        ...

    @property
    def note(self) -> str:
        """A warning to show once when research starts ("" for none)."""
        ...


# A task that is a function: the commit's files and a seed in, the metric out (raise, or None, for a failure).
TaskFunction = Callable[[Mapping[str, str], int], float | None]


class FunctionMeasurer:
    def __init__(self, store: MemoryStore, ledger: Ledger, task: TaskFunction, holdout: TaskFunction | None) -> None:
        self.store, self.ledger, self.task, self.holdout = store, ledger, task, holdout

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None

    def measure(
        self, wt: Path, exp_id: int, commit: str, kind: str, seed: int, against: Reference | None = None
    ) -> None:
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

    @property
    def note(self) -> str:
        return ""


class SubprocessMeasurer:
    def __init__(self, ws: Workspace, cfg: Config, ledger: Ledger, frozen: dict[str, str], logs: str = "logs") -> None:
        self.ws, self.cfg, self.ledger, self.frozen = ws, cfg, ledger, frozen
        self.logs = ws.state / logs  # each run's output under <logs>/<experiment>/<kind>-<seed>
        self.cache_dir = ws.state / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.bwrap = bubblewrap_path() if cfg.sandbox.enabled else None
        sandbox = "bubblewrap" if self.bwrap else "none"
        self.environment = {**describe_environment(), "node_kind": node_kind(), "sandbox": sandbox}
        self.limits = limits(cfg)

    @property
    def note(self) -> str:
        """Said once at the start when candidates run unconfined, or with their process count uncapped."""
        notes = []
        if self.bwrap is None:
            why = (
                "[sandbox] enabled = false"
                if not self.cfg.sandbox.enabled
                else "bubblewrap (bwrap) is not installed or cannot make namespaces here (apt install bubblewrap)"
            )
            notes.append(
                f"warning: {why}: candidates run unconfined, with resource limits only; they can read what rsi "
                "can, the environment of rsi's own process (/proc) included"
            )
        if os.geteuid() == 0 and not cgroup_available():
            notes.append("warning: no pids cgroup can be made here: a run's process count is not capped")
        return "\n".join(notes)

    def sandbox(self, wt: Path, kind: str) -> Sandbox:
        """The view of one run: the setup may write the cache, only the holdout command sees held-out data."""
        if self.bwrap is None:
            return Bare()
        root, box = self.ws.root, self.cfg.sandbox
        inside: list[str] = []
        outside: list[str] = []
        if kind != HOLDOUT and self.cfg.holdout is not None:
            for entry in self.cfg.holdout.data:
                raw = entry if Path(entry).is_absolute() else os.path.normpath(entry)  # ./data/x as data/x
                if not is_glob(raw):
                    (outside if Path(raw).is_absolute() else inside).append(raw)
                elif Path(raw).is_absolute():
                    outside += sorted(glob.glob(raw, recursive=True))
                else:  # as rsi.toml's globs match (a `*` crosses folders), over what the worktree holds
                    inside += _matching(wt, raw)
        view = View(
            repo=root,
            worktree=wt,
            read_only_inside=sorted(self.frozen),
            hidden_inside=inside,
            read_only=[*([] if kind == SETUP else [self.cache_dir]), *(root / p for p in box.read_only)],
            writable=[*([self.cache_dir] if kind == SETUP else []), *(root / p for p in box.writable)],
            hidden=[Path(p) for p in outside],
            network=box.network,
        )
        return Bubblewrap(view, self.bwrap)

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
        slot = slots.current()
        if slot is not None:
            env.update(slot.env())
        env.update(self.cfg.task.env)
        env["RSI_SEED"] = str(seed)
        env["RSI_CACHE_DIR"] = str(self.cache_dir)
        if self.cfg.task.budget is not None:
            env["RSI_BUDGET_SECONDS"] = f"{self.cfg.task.budget:g}"
        return env

    def spec(
        self, wt: Path, kind: str, command: str, metric: MetricSpec, seed: int, timeout: float, logs: Path
    ) -> RunSpec:
        return RunSpec(
            command=command,
            cwd=wt,
            env=self.environ(seed),
            timeout_s=timeout,
            memory_bytes=self.cfg.task.memory or default_memory(),
            output_cap=self.cfg.task.output_cap,
            log_dir=logs,
            metric=metric,
            sandbox=self.sandbox(wt, kind),
            limits=self.slot_limits(),
        )

    def slot_limits(self) -> Limits:
        slot = slots.current()
        return self.limits if slot is None else dataclasses.replace(self.limits, cpus=slot.cpus)

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        """The setup command is not an experiment: logged, not in the ledger."""
        logs = self.ws.state / "logs" / "setup"
        result = run(self.spec(wt, SETUP, command, MetricSpec(), 0, timeout, logs))
        return "" if result.status == "ok" else result.reason

    def measure(
        self, wt: Path, exp_id: int, commit: str, kind: str, seed: int, against: Reference | None = None
    ) -> None:
        """One recorded run of the task's command (or of the holdout command, for kind HOLDOUT)."""
        logs = self.logs / str(exp_id) / f"{kind}-{seed}"
        skip = [self.cfg.metric.file] if self.cfg.metric.file else []
        if kind == HOLDOUT:  # frozen code from git, reading what the run before it produced
            metric, command = self.holdout_spec(), self.cfg.holdout.command if self.cfg.holdout else ""
            assert metric is not None
            wt = self.ws.evaluation_copy(wt, commit, skip)
            spec = self.spec(wt, kind, command, metric, seed, self.cfg.task.timeout, logs)
        else:  # every other run starts from a clean checkout; its evaluator gets a fresh one
            self.ws.clean(wt)
            spec = self.spec(wt, kind, self.cfg.task.command, self.metric_spec(), seed, self.cfg.task.timeout, logs)
            if self.cfg.metric.evaluator:
                spec = dataclasses.replace(spec, evaluation=lambda: self._evaluation(wt, commit, kind, skip))
        where = slot.describe() if (slot := slots.current()) is not None else {}
        run_id = self.ledger.start_run(exp_id, kind, seed, {**self.environment, **where, "commit": commit})

        def started(pid: int) -> None:
            self.ledger.set_run_pid(run_id, pid, start_time(pid))

        before = touch_marks(wt, self.frozen)
        watch = None
        if kind != HOLDOUT:  # progress is recorded for every run of the task's command, the champion's included
            pattern = self.cfg.metric.progress_pattern
            watch = Watch(re.compile(pattern.encode()) if pattern else None, against if kind == SCREEN else None)
        result = run(spec, on_start=started, watch=watch)
        status, reason = result.status, result.reason
        tampered = self.tampering(wt, before)
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
                progress=json.dumps(result.progress),
                cpu_s=result.cpu_s,
                busy=result.busy,
            )

    def _evaluation(self, wt: Path, commit: str, kind: str, skip: list[str]) -> tuple[Path, Sandbox]:
        place = self.ws.evaluation_copy(wt, commit, skip)
        return place, self.sandbox(place, kind)

    def tampering(self, wt: Path, before: dict[str, tuple[int, int] | None]) -> str:
        """A run may write new files, never change tracked ones. A frozen file is checked by content, and by
        inode and change time too: a file written and then restored has the same content but a new ctime,
        which no process can set back (in the sandbox frozen files are read-only besides)."""
        changed = self.ws.changed_tracked(wt)
        if changed:
            return f"the run changed tracked files: {', '.join(changed[:3])}"
        now = hash_files(wt, self.frozen)
        bad = [p for p, digest in self.frozen.items() if now[p] != digest]
        if bad:
            return f"frozen file changed: {', '.join(bad[:3])}"
        touched = [p for p, mark in touch_marks(wt, self.frozen).items() if mark != before[p]]
        return f"frozen file written during the run, then restored: {', '.join(touched[:3])}" if touched else ""


def touch_marks(root: Path, paths: Mapping[str, str]) -> dict[str, tuple[int, int] | None]:
    """Inode and change time of each file, not following symlinks (None: missing)."""
    marks: dict[str, tuple[int, int] | None] = {}
    for rel in paths:
        try:
            st = (root / rel).lstat()
            marks[rel] = (st.st_ino, st.st_ctime_ns)
        except OSError:
            marks[rel] = None
    return marks


def start_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _matching(wt: Path, pattern: str) -> list[str]:
    """The worktree's paths (files and folders, .git's aside) that an rsi.toml glob matches; a matched folder is
    hidden whole, so nothing under it is listed again."""
    found = []
    for folder, dirs, files in os.walk(wt):
        here = Path(folder).relative_to(wt)
        hidden = {d for d in dirs if matches(str(here / d), [pattern])}
        dirs[:] = [d for d in dirs if d != ".git" and d not in hidden]
        found += [str(here / d) for d in hidden] + [str(here / f) for f in files if matches(str(here / f), [pattern])]
    return sorted(found)

"""The research loop: baseline first, then propose, commit, run, judge, record; resumable at any instant.

Order of effects, so a kill at any point is safe: a candidate is committed and its ref set before its ledger
row exists (an orphan commit is harmless); a run is a ledger row `running` before the process starts (on
resume it is deleted, its process group killed, and the run done again); a verdict is written in one
transaction together with the kept commit, and only then does the research branch move (on resume the branch is
set from the ledger).
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import psutil

from rsi.config import Config
from rsi.environment import describe_environment
from rsi.errors import UserError
from rsi.judge import Judge, ThresholdJudge, noise_sd
from rsi.ledger import Experiment, Ledger
from rsi.proposer import Context, Proposal, Proposer
from rsi.runner import MetricSpec, RunResult, RunSpec, run, scrub_env
from rsi.workspace import Workspace, hash_files, matches

SETUP_TIMEOUT = 3600.0
MAX_INTERRUPTS = 5  # runs of one experiment cut short in a row before it counts as a crash, not a kill


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    time_budget_s: float | None = None


Listener = Callable[[str, Experiment | None, str], None]  # (event, experiment, message)


def _quiet(event: str, exp: Experiment | None, message: str) -> None:
    return None


class Research:
    def __init__(
        self,
        root: Path,
        cfg: Config,
        proposer_factory: Callable[[Workspace, str], Proposer],
        *,
        tag: str | None = None,
        judge: Judge | None = None,
        listener: Listener = _quiet,
    ) -> None:
        self.root = root.resolve()
        self.cfg = cfg
        self.ws = Workspace(self.root)
        self.listener = listener
        self.judge = judge or ThresholdJudge(cfg.judge.min_delta)
        self.ws.check_repository()
        self.ledger = Ledger(self.ws.state / "ledger.sqlite")
        self._start(tag)
        self.proposer = proposer_factory(self.ws, self.start_commit)
        self.cache_dir = self.ws.state / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.environment = describe_environment()
        self._files: dict[str, str] = {}
        self._files_of = ""

    # start and resume
    def _start(self, tag: str | None) -> None:
        known = self.ledger.get("tag")
        if known is None:
            dirty = self.ws.dirty([*self.cfg.task.editable, *self.cfg.task.frozen])
            if dirty:
                raise UserError(f"uncommitted changes to {', '.join(dirty[:3])}: commit or stash them first")
            tag = tag or time.strftime("%Y%m%d")
            if self.ws.ref(f"refs/heads/rsi/{tag}") is not None:
                raise UserError(f"branch rsi/{tag} already exists: pick another --tag")
            head = self.ws.head()
            frozen = {
                p: sha256(self.ws.read_bytes(head, p)).hexdigest() for p in self.ws.files(head, self.cfg.task.frozen)
            }
            with self.ledger.transaction():
                self.ledger.set("tag", tag)
                self.ledger.set("start_commit", head)
                self.ledger.set("frozen", json.dumps(frozen, sort_keys=True))
                self.ledger.set("task", self.cfg.task.name)
                self.ledger.set("goal", self.cfg.metric.goal)
                self.ledger.set("metric", self.cfg.metric.name)
            self.ws.set_ref(f"refs/heads/rsi/{tag}", head)
        elif tag is not None and tag != known:
            raise UserError(f"this task's research is rsi/{known}; resume it without --tag or use --tag {known}")
        self.tag = self.ledger.get("tag") or ""
        self.start_commit = self.ledger.get("start_commit") or ""
        self.frozen: dict[str, str] = self.ledger.get_json("frozen") or {}
        self.ws.hide_state_dir()
        self._recover()

    def _recover(self) -> None:
        """Undo what a killed orchestrator left half done; see the module docstring for why this is enough."""
        stale = self.ledger.interrupted_runs()
        for _, _, pid, started in stale:
            _kill_orphan(pid, started)
        with self.ledger.transaction():
            self.ledger.drop_interrupted(stale)
            for e in self.ledger.experiments("state = 'running'"):
                self.ledger.update_experiment(e.id, state="proposed")
        self.ws.remove_all_worktrees()
        for e in self.ledger.experiments("commit_sha IS NOT NULL"):
            if self.ws.ref(f"refs/rsi/candidates/{e.id}") != e.commit_sha and e.commit_sha:
                self.ws.set_ref(f"refs/rsi/candidates/{e.id}", e.commit_sha)
        self.ws.set_ref(f"refs/heads/rsi/{self.tag}", self.branch_head())

    def branch_head(self) -> str:
        """The last kept commit: what the research branch must point at (the ledger decides)."""
        row = self.ledger.db.execute(
            "SELECT kept_commit FROM experiments WHERE verdict = 'keep' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row else self.start_commit

    def champion(self) -> Experiment:
        row = self.ledger.db.execute(
            "SELECT id FROM experiments WHERE verdict = 'keep' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        champion = self.ledger.experiment(int(row[0]) if row else 0)
        assert champion is not None
        return champion

    def champion_files(self, commit: str) -> dict[str, str]:
        """The editable files at the champion's commit (cached: they change only on a keep)."""
        if self._files_of != commit:
            paths = self.ws.files(commit, self.cfg.task.editable)
            self._files = {p: self.ws.read(commit, p) for p in paths if not matches(p, self.cfg.task.frozen)}
            self._files_of = commit
        return self._files

    # the loop
    def run(self, limits: Limits) -> None:
        try:
            self._loop(limits)
        finally:
            self.ws.git("worktree", "prune")  # removed worktrees leave bookkeeping behind; clear it

    def _loop(self, limits: Limits) -> None:
        deadline = time.monotonic() + limits.time_budget_s if limits.time_budget_s else None

        def budget_left() -> bool:
            if limits.max_experiments is not None and self.ledger.count() >= limits.max_experiments:
                return False
            return deadline is None or time.monotonic() < deadline

        for e in self.ledger.experiments("state = 'done'"):
            self.proposer.observe(e)
        baseline = self.ledger.experiment(0)
        if baseline is None or baseline.state != "done":
            if not budget_left() and baseline is None:
                return self.listener("stop", None, "the experiment budget is already spent")
            self._setup()
            self._baseline()
        for e in self.ledger.experiments("state != 'done'"):
            self._experiment(e)
        while budget_left():
            champion = self.champion()
            files = self.champion_files(self.branch_head())
            proposal = self.proposer.propose(Context(champion, files, self.ledger))
            if proposal is None:
                return self.listener("stop", None, f"proposer {self.proposer.name} has nothing more to propose")
            exp = self._record_proposal(proposal, champion, files)
            if exp.state != "done":
                self._experiment(exp)
            else:
                self.proposer.observe(exp)
        self.listener("stop", None, "budget reached")

    def _setup(self) -> None:
        if not self.cfg.task.setup or self.ledger.get("setup_done") == "1":
            return
        self.listener("message", None, f"setup: {self.cfg.task.setup}")
        wt = self.ws.add_worktree("setup", self.start_commit)
        try:
            result = self._execute(wt, self.cfg.task.setup, MetricSpec(), 0, SETUP_TIMEOUT, "setup")
        finally:
            self.ws.remove_worktree("setup")
        if result.returncode != 0:
            raise UserError(f"setup command failed ({result.reason}); see {self.ws.state / 'logs' / 'setup'}")
        self.ledger.set("setup_done", "1")

    def _baseline(self) -> None:
        if self.ledger.experiment(0) is None:
            with self.ledger.transaction():
                self.ledger.add_experiment(
                    exp_id=0,
                    parent=None,
                    parent_commit=None,
                    commit_sha=self.start_commit,
                    proposer="baseline",
                    hypothesis="baseline",
                    params={},
                    diff="",
                )
        exp = self.ledger.experiment(0)
        assert exp is not None
        self._experiment(exp, repeats=self.cfg.judge.baseline_repeats)
        exp = self.ledger.experiment(0)
        assert exp is not None
        if not exp.valid():
            run0 = exp.runs[0] if exp.runs else None
            raise UserError(
                f"the baseline gave no metric ({exp.status}: {run0.reason if run0 else 'no run'}); "
                f"fix the task and start again (logs under {self.ws.state / 'logs' / '0'})"
            )

    def _record_proposal(self, proposal: Proposal, champion: Experiment, files: dict[str, str]) -> Experiment:
        exp_id = self.ledger.next_id()
        parent_commit = self.branch_head()
        reason = self._reject_reason(proposal)
        diff = "" if reason else unified_diff(files, proposal.edits)
        if not reason and not diff:
            reason = "the edit changes nothing"
        sha = None
        if not reason:
            wt = self.ws.add_worktree(str(exp_id), parent_commit)
            sha = self.ws.commit_in(wt, proposal.edits, f"rsi candidate {exp_id}: {proposal.hypothesis}")
            self.ws.set_ref(f"refs/rsi/candidates/{exp_id}", sha)
        with self.ledger.transaction():
            self.ledger.add_experiment(
                exp_id=exp_id,
                parent=champion.id,
                parent_commit=parent_commit,
                commit_sha=sha,
                proposer=self.proposer.name,
                hypothesis=proposal.hypothesis,
                params=proposal.params,
                diff=diff,
                state="done" if reason else "proposed",
                status="rejected" if reason else None,
                verdict="discard" if reason else None,
                reason=reason,
            )
        exp = self.ledger.experiment(exp_id)
        assert exp is not None
        self.listener("done" if reason else "proposed", exp, reason)
        return exp

    def _reject_reason(self, proposal: Proposal) -> str:
        if not proposal.edits:
            return "the proposal has no edits"
        for path in proposal.edits:
            if path.startswith("/") or ".." in Path(path).parts:
                return f"{path} is outside the repository"
            if matches(path, self.cfg.task.frozen):
                return f"{path} is frozen"
            if not matches(path, self.cfg.task.editable):
                return f"{path} is not editable"
        return ""

    def _experiment(self, exp: Experiment, repeats: int = 1) -> None:
        """Run an experiment (new or interrupted) to its verdict."""
        if exp.interrupts >= MAX_INTERRUPTS:
            reason = f"the orchestrator died during its run {exp.interrupts} times in a row"
            with self.ledger.transaction():
                self.ledger.update_experiment(exp.id, state="done", status="crash", verdict="discard", reason=reason)
            return
        assert exp.commit_sha is not None
        self.ledger.update_experiment(exp.id, state="running")
        self.listener("running", exp, "")
        wt = self.ws.add_worktree(str(exp.id), exp.commit_sha)
        try:
            decision_reason = self._measure(exp, wt, repeats)
        finally:
            self.ws.remove_worktree(str(exp.id))
        done = self.ledger.experiment(exp.id)
        assert done is not None
        self.listener("done", done, decision_reason)
        self.proposer.observe(done)

    def _measure(self, exp: Experiment, wt: Path, repeats: int) -> str:
        is_baseline = exp.id == 0
        commit = exp.commit_sha or ""
        champion = None if is_baseline else self.champion()
        current = self.ledger.experiment(exp.id)
        assert current is not None
        while True:
            n = len(current.metrics())
            result = self._execute(
                wt,
                self.cfg.task.command,
                self._metric_spec(),
                n + 1,
                self.cfg.task.timeout,
                exp.id,
                commit=commit,
            )
            if is_baseline and result.status == "ok":
                self._holdout(wt, exp.id, n + 1, commit)
            current = self.ledger.experiment(exp.id)
            assert current is not None
            if is_baseline:
                if len(current.metrics()) < repeats:
                    continue
                return self._finish(current, "baseline", f"{len(current.valid())} valid runs")
            assert champion is not None
            decision = self.judge.decide(current.metrics(), champion.valid(), self.cfg.metric.goal)
            if decision.verdict == "more" and len(current.metrics()) < self.cfg.judge.max_repeats:
                continue
            verdict = "inconclusive" if decision.verdict == "more" else decision.verdict
            if verdict == "keep":
                self._holdout(wt, exp.id, len(current.metrics()), commit)
            return self._finish(current, verdict, decision.reason, champion)

    def _finish(self, exp: Experiment, verdict: str, reason: str, champion: Experiment | None = None) -> str:
        status = next((r.status for r in exp.runs if r.kind == "select" and r.status != "ok"), "ok") or "ok"
        kept_commit = None
        if verdict == "keep" and status == "ok":
            assert champion is not None and exp.commit_sha is not None
            before, after = champion.mean(), exp.mean()
            message = (
                f"{exp.hypothesis}\n\n{self.cfg.metric.name}: {before:.6g} -> {after:.6g} "
                f"(experiment {exp.id}, {len(exp.valid())} run(s); {reason})"
            )
            kept_commit = self.ws.commit_tree(exp.commit_sha, self.branch_head(), message)
        elif verdict == "keep":
            verdict = "discard"
        with self.ledger.transaction():
            self.ledger.update_experiment(
                exp.id, state="done", status=status, verdict=verdict, reason=reason, kept_commit=kept_commit
            )
        if kept_commit:
            self.ws.set_ref(f"refs/heads/rsi/{self.tag}", kept_commit)
        return reason

    def _metric_spec(self) -> MetricSpec:
        m = self.cfg.metric
        return MetricSpec(pattern=m.pattern, file=m.file, key=m.key, evaluator=m.evaluator)

    def _holdout(self, wt: Path, exp_id: int, seed: int, commit: str) -> None:
        h = self.cfg.holdout
        if h is None:
            return
        spec = MetricSpec(pattern=h.pattern, file=h.file, key=h.key)
        self._execute(wt, h.command, spec, seed, self.cfg.task.timeout, exp_id, kind="holdout", commit=commit)

    def _environ(self, seed: int) -> dict[str, str]:
        env = scrub_env(os.environ, deny=self.cfg.task.secret_patterns, allow=self.cfg.task.env_pass)
        env.update(self.cfg.task.env)
        env["RSI_SEED"] = str(seed)
        env["RSI_CACHE_DIR"] = str(self.cache_dir)
        if self.cfg.task.budget is not None:
            env["RSI_BUDGET_SECONDS"] = f"{self.cfg.task.budget:g}"
        return env

    def _execute(
        self,
        wt: Path,
        command: str,
        metric: MetricSpec,
        seed: int,
        timeout: float,
        exp_id: int | str,
        kind: str = "select",
        commit: str = "",
    ) -> RunResult:
        env = self._environ(seed)
        logs = self.ws.state / "logs" / str(exp_id) / f"{kind}-{seed}"
        spec = RunSpec(
            command=command,
            cwd=wt,
            env=env,
            timeout_s=timeout,
            memory_bytes=self.cfg.task.memory,
            output_cap=self.cfg.task.output_cap,
            log_dir=logs,
            metric=metric,
        )
        if not isinstance(exp_id, int):
            return run(spec)
        record = {**self.environment, "commit": commit}
        run_id = self.ledger.start_run(exp_id, kind, seed, record)

        def started(pid: int) -> None:
            self.ledger.set_run_pid(run_id, pid, _start_time(pid))

        result = run(spec, on_start=started)
        status, reason = result.status, result.reason
        tampered = self._tampering(wt)
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

    def _tampering(self, wt: Path) -> str:
        changed = self.ws.changed_tracked(wt)
        if changed:
            return f"the run changed tracked files: {', '.join(changed[:3])}"
        now = hash_files(wt, self.frozen)
        bad = [p for p, digest in self.frozen.items() if now[p] != digest]
        return f"frozen file changed: {', '.join(bad[:3])}" if bad else ""

    # summaries
    def noise(self) -> float | None:
        return noise_sd([e.valid() for e in self.ledger.experiments("state = 'done'")])

    def summary(self) -> dict[str, Any]:
        base = self.ledger.experiment(0)
        best = self.champion() if base else None
        return {
            "baseline": base.mean() if base else None,
            "best": best.mean() if best else None,
            "best_id": best.id if best else None,
            "experiments": self.ledger.count(),
            "branch": f"rsi/{self.tag}",
        }


def _start_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _kill_orphan(pid: int | None, started: float | None) -> None:
    """Kill the process group of a run whose orchestrator died, if that process still exists."""
    if not pid:
        return
    try:
        if started and abs(psutil.Process(pid).create_time() - started) > 1.0:
            return  # the pid was reused by an unrelated process
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


def unified_diff(before: Mapping[str, str], edits: Mapping[str, str]) -> str:
    """The candidate's diff against its parent, for people and for duplicate detection."""
    out: list[str] = []
    for path, text in sorted(edits.items()):
        old = before.get(path, "")
        if old != text:
            out.extend(
                difflib.unified_diff(
                    old.splitlines(keepends=True), text.splitlines(keepends=True), f"a/{path}", f"b/{path}"
                )
            )
    return "".join(out)

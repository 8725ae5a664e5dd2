"""The research loop: baseline first, then propose, commit, run, judge, record; resumable at any instant.

Order of effects, so that a kill at any point is safe:
- a candidate is committed and its ref set before its ledger row exists (an orphan commit is harmless);
- a run is a ledger row `running` before its process starts; on resume that row is deleted, its process
  group killed, and the run done again with the same seed;
- a verdict is written in one transaction with the kept commit, and only then does the research branch move;
  on resume the branch is set from the ledger.
A keep lands only after the judge's replication on fresh seeds, so the branch never needs a revert.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from scipy import stats

from rsi.config import Config
from rsi.errors import UserError
from rsi.judge import Decision, Judge, Noise, SequentialJudge, pooled_noise
from rsi.ledger import SELECT_KINDS, Experiment, Ledger
from rsi.measure import (
    CONFIRM,
    FRESH,
    HOLDOUT,
    SCREEN,
    VERIFY,
    FunctionMeasurer,
    Measurer,
    SubprocessMeasurer,
    TaskFunction,
    fresh_seed,
)
from rsi.proposer import Context, Proposal, Proposer
from rsi.store import MemoryStore, Store
from rsi.workspace import Workspace, matches

SETUP_TIMEOUT = 3600.0
CHAMPION_RUNS = 8  # fresh runs the champion is brought up to, one per candidate (see _remeasure)
NOISE_DOF = 30  # ... and for as long as the noise estimate has fewer degrees of freedom
MAX_INTERRUPTS = 5  # runs of one experiment cut short in a row before it counts as a crash, not a kill


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    time_budget_s: float | None = None


Listener = Callable[[str, Experiment | None, str], None]  # (event, experiment, message)
MeasurerFactory = Callable[[Store, Config, Ledger, dict[str, str]], Measurer]


def _subprocess_measurer(store: Store, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> Measurer:
    assert isinstance(store, Workspace), "subprocess runs need a git workspace"
    return SubprocessMeasurer(store, cfg, ledger, frozen)


def _quiet(event: str, exp: Experiment | None, message: str) -> None:
    return None


def default_judge(cfg: Config) -> Judge:
    j = cfg.judge
    return SequentialJudge(confidence=j.confidence, max_repeats=j.max_repeats, min_delta=j.min_delta)


class Research:
    def __init__(
        self,
        root: Path,
        cfg: Config,
        proposer_factory: Callable[[Store, str], Proposer],
        *,
        tag: str | None = None,
        judge: Judge | None = None,
        listener: Listener = _quiet,
        store: Store | None = None,
        measurer: MeasurerFactory | None = None,
    ) -> None:
        """`store` and `measurer` default to the user's git repository at `root` and real subprocesses."""
        self.root = root.resolve()
        self.cfg = cfg
        self.store: Store = store or Workspace(self.root)
        self.listener = listener
        self.judge = judge or default_judge(cfg)
        self.store.open()
        state = self.store.state
        self.logs = state / "logs" if state else None
        self.ledger = Ledger(state / "ledger.sqlite" if state else Path(":memory:"))
        self._start(tag)
        frozen = self.ledger.get_json("frozen") or {}
        self.measurer = (measurer or _subprocess_measurer)(self.store, cfg, self.ledger, frozen)
        self.proposer = proposer_factory(self.store, self.start_commit)
        self._files: dict[str, str] = {}
        self._files_of = ""

    # start and resume
    def _start(self, tag: str | None) -> None:
        known = self.ledger.get("tag")
        if known is None:
            tag = tag or time.strftime("%Y%m%d")
            task = self.cfg.task
            head, frozen = self.store.begin(tag, [*task.editable, *task.frozen], task.frozen)
            with self.ledger.transaction():
                for key, value in {
                    "tag": tag,
                    "start_commit": head,
                    "frozen": json.dumps(frozen, sort_keys=True),
                    "task": self.cfg.task.name,
                    "goal": self.cfg.metric.goal,
                    "metric": self.cfg.metric.name,
                }.items():
                    self.ledger.set(key, value)
        elif tag is not None and tag != known:
            raise UserError(f"this task's research is rsi/{known}; resume it without --tag or use --tag {known}")
        self.tag = self.ledger.get("tag") or ""
        self.start_commit = self.ledger.get("start_commit") or ""
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
        self.store.recover()
        for e in self.ledger.experiments("commit_sha IS NOT NULL AND id > 0"):
            if e.commit_sha:
                self.store.ensure_candidate(e.id, e.commit_sha)
        self.store.set_branch(self.tag, self.branch_head())

    def branch_head(self) -> str:
        """The last kept commit: what the research branch must point at (the ledger decides)."""
        row = self.ledger.db.execute(
            "SELECT kept_commit FROM experiments WHERE verdict = 'keep' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row else self.start_commit

    def champion(self) -> Experiment:
        row = self.ledger.db.execute("SELECT id FROM experiments WHERE verdict = 'keep' ORDER BY id DESC LIMIT 1")
        found = row.fetchone()
        champion = self.ledger.experiment(int(found[0]) if found else 0)
        assert champion is not None
        return champion

    def champion_files(self, commit: str) -> dict[str, str]:
        """The editable files at the champion's commit (cached: they change only on a keep)."""
        if self._files_of != commit:
            paths = self.store.files(commit, self.cfg.task.editable)
            self._files = {p: self.store.read(commit, p) for p in paths if not matches(p, self.cfg.task.frozen)}
            self._files_of = commit
        return self._files

    def noise(self) -> Noise | None:
        """Run-to-run noise pooled over every experiment measured more than once."""
        return pooled_noise(list(self.ledger.select_metrics().values()))

    # the loop
    def run(self, limits: Limits) -> None:
        try:
            self._loop(limits)
        finally:
            self.store.close()

    def _loop(self, limits: Limits) -> None:
        deadline = _deadline(limits.time_budget_s)

        def budget_left() -> bool:
            if limits.max_experiments is not None and self.ledger.count() >= limits.max_experiments:
                return False
            return deadline is None or _now() < deadline

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
        wt = self.store.checkout("setup", self.start_commit)
        try:
            failure = self.measurer.setup(wt, self.cfg.task.setup, SETUP_TIMEOUT)
        finally:
            self.store.release("setup")
        if failure:
            where = self.logs / "setup" if self.logs else "its output"
            raise UserError(f"setup command failed ({failure}); see {where}")
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
        self._experiment(exp)
        exp = self.ledger.experiment(0)
        assert exp is not None
        if not exp.valid():
            run0 = exp.runs[0] if exp.runs else None
            raise UserError(
                f"the baseline gave no metric ({exp.status}: {run0.reason if run0 else 'no run'}); "
                f"fix the task and start again (logs under {self.logs / '0' if self.logs else '-'})"
            )
        noise, detectable = self.noise(), self.judge.detectable(len(exp.valid()), self.noise())
        if detectable is not None:
            self.ledger.set("detectable", repr(detectable))
        if noise is not None:
            smallest = f"; smallest improvement it keeps 80% of the time: {detectable:.4g}" if detectable else ""
            self.listener("message", None, f"noise sd {noise.sd:.4g} ({noise.dof} dof){smallest}")

    def _record_proposal(self, proposal: Proposal, champion: Experiment, files: dict[str, str]) -> Experiment:
        exp_id = self.ledger.next_id()
        parent_commit = self.branch_head()
        reason = self._reject_reason(proposal)
        diff = "" if reason else unified_diff(files, proposal.edits)
        if not reason and not diff:
            reason = "the edit changes nothing"
        sha = None
        if not reason:
            message = f"rsi candidate {exp_id}: {proposal.hypothesis}"
            sha = self.store.candidate(exp_id, parent_commit, proposal.edits, message)
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

    def _experiment(self, exp: Experiment) -> None:
        """Measure an experiment (new or interrupted) to its verdict."""
        if exp.interrupts >= MAX_INTERRUPTS:
            reason = f"the orchestrator died during its run {exp.interrupts} times in a row"
            with self.ledger.transaction():
                self.ledger.update_experiment(exp.id, state="done", status="crash", verdict="discard", reason=reason)
            return
        assert exp.commit_sha is not None
        self.ledger.update_experiment(exp.id, state="running")
        self.listener("running", exp, "")
        wt = self.store.checkout(str(exp.id), exp.commit_sha)
        try:
            if exp.id == 0:
                self._measure_baseline(exp, wt)
            else:
                self._measure_candidate(exp, wt)
        finally:
            self.store.release(str(exp.id))
            self.store.release("champion")
        done = self.ledger.experiment(exp.id)
        assert done is not None
        self.listener("done", done, done.reason)
        self.proposer.observe(done)

    def _measure_baseline(self, exp: Experiment, wt: Path) -> None:
        """Fresh runs on seeds 1..baseline_repeats, each followed by the holdout: the noise floor."""
        assert exp.commit_sha is not None
        commit = exp.commit_sha
        for seed in range(1, self.cfg.judge.baseline_repeats + 1):
            if not _has_run(exp, FRESH, seed):
                self.measurer.measure(wt, 0, commit, FRESH, seed)
                exp = self._reload(exp)
                if _metric_at(exp, seed) is not None:
                    self._holdout(wt, exp, seed)
        self._finish(self._reload(exp), "baseline", Decision("keep", f"{self.cfg.judge.baseline_repeats} runs"))

    def _measure_candidate(self, exp: Experiment, wt: Path) -> None:
        """Screening runs, paired with the champion's fresh seeds, until the judge decides; then replication."""
        assert exp.commit_sha is not None
        champion = self._remeasure(self.champion())
        # the champion's unbiased runs; a judge without replication (the autoresearch rule) has only its
        # screening runs to offer
        pool = [r for r in champion.runs if r.kind == FRESH and r.status == "ok" and r.metric is not None] or [
            r for r in champion.runs if r.kind in SELECT_KINDS and r.status == "ok" and r.metric is not None
        ]
        pool_metrics = [r.metric for r in pool if r.metric is not None]
        deletes = _deletes_code(exp.diff)
        while True:
            screened = [r for r in exp.runs if r.kind == SCREEN]
            if screened:
                metrics = [r.metric if r.status == "ok" else None for r in screened]
                decision = self.judge.decide(metrics, pool_metrics, self.cfg.metric.goal, self.noise(), deletes)
                if decision.verdict != "more":
                    break
                if len(screened) >= self.cfg.judge.max_repeats:
                    decision = Decision("inconclusive", decision.reason, decision.ci)
                    break
            k = len(screened)
            seed = pool[k].seed if k < len(pool) else fresh_seed(exp.id, 100 + k)
            self.measurer.measure(wt, exp.id, exp.commit_sha, SCREEN, seed)
            exp = self._reload(exp)
        if decision.verdict == "keep" and self.judge.replicate:
            decision = self._replicate(exp, wt, champion)
        if decision.verdict == "keep":
            self._top_up(exp, wt, self.cfg.judge.baseline_repeats if self.judge.replicate else 0)
        self._finish(self._reload(exp), decision.verdict, decision, champion)

    def _remeasure(self, champion: Experiment) -> Experiment:
        """Periodic re-measurement: one more fresh run of the champion per candidate while its pool is under
        CHAMPION_RUNS or the noise estimate has under NOISE_DOF degrees of freedom. A precise champion and noise
        estimate are what let one run of a candidate decide; this costs a few runs per keep, not per candidate."""
        fresh = sum(1 for r in champion.runs if r.kind == FRESH)
        noise = self.noise()
        if not self.judge.replicate or champion.commit_sha is None:
            return champion
        if fresh >= CHAMPION_RUNS and noise is not None and noise.dof >= NOISE_DOF:
            return champion
        wt = self.store.checkout("champion", champion.commit_sha)
        self.measurer.measure(wt, champion.id, champion.commit_sha, FRESH, fresh_seed(champion.id, 5000 + fresh))
        return self._reload(champion)

    def _replicate(self, exp: Experiment, wt: Path, champion: Experiment) -> Decision:
        """Candidate and champion on the same fresh seeds, new to both; the champion runs first so that the
        candidate's own run is the last one in its worktree (the holdout reads what it produced)."""
        assert champion.commit_sha is not None and exp.commit_sha is not None
        champ_wt = self.store.checkout("champion", champion.commit_sha)
        seeds = [fresh_seed(exp.id, j) for j in range(1, self.judge.replicate + 1)]
        for seed in seeds:
            if not _has_run(champion, FRESH, seed):
                self.measurer.measure(champ_wt, champion.id, champion.commit_sha, FRESH, seed)
            if not _has_run(exp, CONFIRM, seed):
                self.measurer.measure(wt, exp.id, exp.commit_sha, CONFIRM, seed)
            exp, champion = self._reload(exp), self._reload(champion)
        cand = [_metric_at(exp, seed, CONFIRM) for seed in seeds]
        champ = [_metric_at(champion, seed) for seed in seeds]
        confirmed = self.judge.confirm(cand, champ, self.cfg.metric.goal, self.noise())
        if confirmed.verdict != "keep":
            self.ledger.update_experiment(exp.id, reverted=1)
            return Decision("discard", f"screening kept it, but it {confirmed.reason}", confirmed.ci)
        return confirmed

    def _top_up(self, exp: Experiment, wt: Path, runs: int) -> None:
        """A new champion gets baseline_repeats fresh runs, used in no decision about itself: what later
        candidates are compared with, free of the winner's curse of the runs that kept it (its screening and
        confirmation runs were selected for being good). Its last run is followed by the holdout."""
        commit = exp.commit_sha
        assert commit is not None
        exp = self._reload(exp)
        k = self.judge.replicate
        while sum(1 for r in exp.runs if r.kind == FRESH) < runs:
            k += 1
            self.measurer.measure(wt, exp.id, commit, FRESH, fresh_seed(exp.id, k))
            exp = self._reload(exp)
        last = max((r for r in exp.runs if r.kind in SELECT_KINDS), key=lambda r: r.id)
        if last.status == "ok":
            self._holdout(wt, exp, last.seed)

    def _finish(self, exp: Experiment, verdict: str, decision: Decision, champion: Experiment | None = None) -> None:
        status = next((r.status for r in exp.runs if r.kind in SELECT_KINDS and r.status != "ok"), "ok") or "ok"
        kept_commit = None
        if verdict == "keep" and status == "ok" and champion is not None:
            assert exp.commit_sha is not None
            before, after = champion.mean(), exp.mean()
            message = (
                f"{exp.hypothesis}\n\n{self.cfg.metric.name}: {before:.6g} -> {after:.6g} "
                f"(experiment {exp.id}, {len(exp.valid())} runs; {decision.reason})"
            )
            kept_commit = self.store.keep(exp.commit_sha, self.branch_head(), message)
        elif verdict == "keep" and champion is not None:
            verdict = "discard"
        ci = decision.ci or (None, None)
        with self.ledger.transaction():
            self.ledger.update_experiment(
                exp.id,
                state="done",
                status=status,
                verdict=verdict,
                reason=decision.reason,
                kept_commit=kept_commit,
                ci_low=ci[0],
                ci_high=ci[1],
            )
        if kept_commit:
            self.store.set_branch(self.tag, kept_commit)

    def _holdout(self, wt: Path, exp: Experiment, seed: int) -> None:
        if self.cfg.holdout is not None and exp.commit_sha:
            self.measurer.measure(wt, exp.id, exp.commit_sha, HOLDOUT, seed)

    def _reload(self, exp: Experiment) -> Experiment:
        fresh = self.ledger.experiment(exp.id)
        assert fresh is not None
        return fresh

    def verify(self, commit: str | None, runs: int) -> tuple[Experiment, list[float | None], str, bool]:
        """Re-run a recorded commit (default: the champion) on fresh seeds. Returns the experiment, the new
        metrics, a sentence, and whether the recorded mean is reproduced within the interval the noise allows
        (two-sided, at the judge's confidence)."""
        exp = self._find(commit)
        assert exp.commit_sha is not None
        done = sum(1 for r in exp.runs if r.kind == VERIFY)
        wt = self.store.checkout("verify", exp.commit_sha)
        try:
            for k in range(runs):
                self.measurer.measure(wt, exp.id, exp.commit_sha, VERIFY, fresh_seed(exp.id, 8000 + done + k))
        finally:
            self.store.release("verify")
            self.store.close()
        exp = self._reload(exp)
        fresh = [r.metric if r.status == "ok" else None for r in exp.runs if r.kind == VERIFY][done:]
        valid = [m for m in fresh if m is not None]
        recorded, noise = exp.valid(), self.noise()
        if not valid or not recorded:
            return exp, fresh, "no valid run to compare", False
        diff = statistics.fmean(valid) - statistics.fmean(recorded)
        if noise is None or noise.sd == 0:
            ok = abs(diff) <= 1e-12 * max(1.0, abs(statistics.fmean(recorded)))
            return exp, fresh, f"recorded {statistics.fmean(recorded):.6g}, now {statistics.fmean(valid):.6g}", ok
        half = float(stats.t.ppf(0.5 + self.cfg.judge.confidence / 2, noise.dof)) * noise.sd
        half *= math.sqrt(1 / len(valid) + 1 / len(recorded))
        sentence = (
            f"recorded {statistics.fmean(recorded):.6g} over {len(recorded)} runs, now {statistics.fmean(valid):.6g}"
            f" over {len(valid)}: difference {diff:+.4g}, allowed +-{half:.4g}"
        )
        return exp, fresh, sentence, abs(diff) <= half

    def _find(self, commit: str | None) -> Experiment:
        if commit is None:
            return self.champion()
        for e in self.ledger.experiments():
            if any(c and c.startswith(commit) for c in (e.kept_commit, e.commit_sha)):
                return e
        raise UserError(f"no experiment of this research has commit {commit}")

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


def _has_run(exp: Experiment, kind: str, seed: int) -> bool:
    return any(r.kind == kind and r.seed == seed for r in exp.runs)


def _metric_at(exp: Experiment, seed: int, kind: str = FRESH) -> float | None:
    return next((r.metric for r in exp.runs if r.kind == kind and r.seed == seed and r.status == "ok"), None)


def _deletes_code(diff: str) -> bool:
    """More lines removed than added (blank lines aside): the simplicity rule may keep it at no gain."""
    lines = diff.splitlines()
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++") and x[1:].strip())
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---") and x[1:].strip())
    return removed > added


def _now() -> float:
    return time.monotonic()


def _deadline(budget: float | None) -> float | None:
    return None if budget is None else _now() + budget


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


def in_process(
    cfg: Config,
    files: Mapping[str, str],
    task: TaskFunction,
    proposer: Proposer,
    *,
    holdout: TaskFunction | None = None,
    judge: Judge | None = None,
    listener: Listener = _quiet,
) -> Research:
    """The same research loop on a task that is a Python function of the files: no git, no subprocess, an
    in-memory ledger. For synthetic tasks, benchmarks and the meta level."""
    store = MemoryStore(files)

    def measurer(st: Store, c: Config, ledger: Ledger, frozen: dict[str, str]) -> Measurer:
        return FunctionMeasurer(store, ledger, task, holdout)

    return Research(
        Path("."), cfg, lambda s, c: proposer, store=store, measurer=measurer, judge=judge, listener=listener
    )

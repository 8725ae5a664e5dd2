"""The research loop: baseline first, then propose, commit, run, judge, record; resumable at any instant.

Order of effects, so that a kill at any point is safe:
- a candidate is committed and its ref set before its ledger row exists (an orphan commit is harmless);
- a run is a ledger row `running` before its process starts; on resume that row is deleted, its process
  group killed, and the run done again with the same seed;
- a verdict is written in one transaction with the kept commit, and only then does the research branch move;
  on resume the branch is set from the ledger.
A keep lands only after the judge's replication on fresh seeds; one whose later fresh runs show it did not hold
is reverted by a commit on the branch (Experimenter.holds), recorded in the same way: ledger first, then branch.
"""

from __future__ import annotations

import ast
import difflib
import functools
import glob
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsi import interrupt, slots
from rsi.config import Config
from rsi.environment import hold_kind, node_kind
from rsi.errors import UserError
from rsi.executor import Workers
from rsi.experiment import NO_VALUE, RETEST, SUPERSEDED, Experimenter, OutOfBudget, broken_constraint
from rsi.fork import FORK_TAG, resolve
from rsi.judge import Judge, SequentialJudge
from rsi.knobs import carried_params, literal_change
from rsi.ledger import Experiment, Ledger
from rsi.measure import (
    CONFIRM,
    FRESH,
    HOLDOUT,
    SCREEN,
    FunctionMeasurer,
    Measurer,
    SubprocessMeasurer,
    TaskFunction,
)
from rsi.proposer import Context, Proposal, Proposer
from rsi.runner import BUSY, kill_orphan
from rsi.slots import Slot, plan
from rsi.store import MemoryStore, Store
from rsi.workspace import Workspace, is_glob, matches

SETUP_TIMEOUT = 3600.0
MAX_HIDDEN = 2000  # held-out paths a glob may name: each is a mount in a run's sandbox
MAX_INTERRUPTS = 5  # runs of one experiment cut short in a row before it counts as a crash, not a kill
BUSY_REPEAT_S = 600.0  # the warning about contended runs is given again at most this often


class Ahead:
    """One proposal made in a thread of its own, on its own connection to the ledger."""

    def __init__(self, proposer: Proposer, champion: Experiment, files: dict[str, str], ledger: Path) -> None:
        self.proposal: Proposal | None = None
        self.error: BaseException | None = None

        def work() -> None:
            side = Ledger(ledger)
            try:
                self.proposal = proposer.propose(Context(champion, files, side))
            except BaseException as e:  # handed to the main thread, which raises it
                self.error = e
            finally:
                side.close()

        self.thread = threading.Thread(target=work, name="rsi-propose-ahead", daemon=True)
        self.thread.start()

    def wait(self, give_up: Callable[[], str] = lambda: "") -> bool:
        """Waits for the proposal; False when `give_up` says why not first (the time budget ran out: a model
        slow to answer must not hold the research past its end). The thread then finishes on its own."""
        while self.thread.is_alive():
            self.thread.join(0.2)
            if self.thread.is_alive() and give_up():
                return False
        return True

    def result(self) -> Proposal | None:
        self.wait()
        if self.error is not None:
            raise self.error
        return self.proposal


@dataclass(frozen=True)
class Limits:
    max_experiments: int | None = None
    time_budget_s: float | None = None
    max_runs: int | None = None  # runs of the task in the ledger: a budget that counts repeats too


Listener = Callable[[str, Experiment | None, str], None]  # (event, experiment, message)
MeasurerFactory = Callable[[Store, Config, Ledger, dict[str, str]], Measurer]


def _subprocess_measurer(store: Store, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> Measurer:
    assert isinstance(store, Workspace), "subprocess runs need a git workspace"
    hold_kind(ledger, node_kind(), "this machine")
    return SubprocessMeasurer(store, cfg, ledger, frozen)


def _ray_measurer(store: Store, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> Measurer:
    from rsi.cluster import RayMeasurer  # Ray is an optional extra

    assert isinstance(store, Workspace), "runs on Ray need a git workspace"
    return RayMeasurer(store, cfg, ledger, frozen)


def _quiet(event: str, exp: Experiment | None, message: str) -> None:
    return None


def default_judge(cfg: Config) -> Judge:
    j = cfg.judge
    return SequentialJudge(
        confidence=j.confidence,
        max_repeats=j.max_repeats,
        min_delta=j.min_delta,
        replicate=j.replicate,
        champion_runs=j.baseline_repeats if j.replicate else 0,  # the champion's top-up (Experimenter)
    )


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
        try:
            self._open(tag, proposer_factory, measurer)
        except BaseException:  # refused (another tag, a changed rsi.toml): the lock is left clean
            self.store.close()
            raise

    def _open(
        self,
        tag: str | None,
        proposer_factory: Callable[[Store, str], Proposer],
        measurer: MeasurerFactory | None,
    ) -> None:
        cfg = self.cfg
        state = self.store.state
        self.logs = state / "logs" if state else None
        self.ledger = Ledger(state / "ledger.sqlite" if state else Path(":memory:"))
        self._start(tag)
        frozen = self.ledger.get_json("frozen") or {}
        if measurer is None:
            measurer = _ray_measurer if cfg.executor.kind == "ray" else _subprocess_measurer
        self.measurer = measurer(self.store, cfg, self.ledger, frozen)
        self.experimenter = Experimenter(
            cfg, self.store, self.ledger, self.measurer, self.judge, self.tag, self.start_commit
        )
        self.experimenter.say = self._reverted
        self.experimenter.spent = self._out_of_budget
        self._recover()
        ex = cfg.executor
        if ex.kind == "ray":  # the cluster places each run: the driver's threads only wait for them
            capacity: int = getattr(self.measurer, "capacity", 1)
            count = ex.workers or capacity
            self.slots, self.slots_note = [Slot(i, ()) for i in range(count)], ""
        else:
            self.slots, self.slots_note = plan(ex.workers, ex.gpus, ex.gpus_per_experiment, ex.cpus_per_experiment)
        last_run = self.ledger.db.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        # runs before this session are not warned about again; contended runs warned about; when
        self._busy_seen = (int(last_run or 0), 0, -math.inf)
        if len(self.slots) > 1 and state is None:
            raise UserError("several workers need a research on disk (a git repository), not in memory")
        self.proposer = proposer_factory(self.store, self.start_commit)
        self._files: tuple[str, dict[str, str]] = ("", {})
        self.limits = Limits()
        self._deadline: float | None = None
        self._links: tuple[str, set[str]] = ("", set())
        self._seen: dict[str, set[str]] = {}  # parent commit -> normalized changes tried on it
        self._changes_lock = threading.Lock()
        self._unanswered: Ahead | None = None  # a proposal made ahead and not waited for: the budget ran out

    # start and resume
    def _start(self, tag: str | None) -> None:
        self._check_holdout_data()
        self._check_sandbox_paths()
        known = self.ledger.get("tag")
        if known is None:
            self._check_globs()
            tag = tag or self.ledger.get(FORK_TAG) or time.strftime("%Y%m%d")
            task = self.cfg.task
            head, frozen = self.store.begin(tag, [*task.editable, *task.frozen], task.frozen)
            with self.ledger.transaction():
                for key, value in {
                    "tag": tag,
                    "start_commit": head,
                    "frozen": json.dumps(frozen, sort_keys=True),
                    "task": self.cfg.task.name,
                    **measure_meta(self.cfg),
                }.items():
                    self.ledger.set(key, value)
        elif tag is not None and tag != known:
            raise UserError(f"this task's research is rsi/{known}; resume it without --tag or use --tag {known}")
        else:
            self._same_metric()
            self._start_again(known)
        self.tag = self.ledger.get("tag") or ""
        self.start_commit = self.ledger.get("start_commit") or ""
        constraints = json.dumps([c.model_dump() for c in self.cfg.constraints])
        if self.ledger.get("constraints") != constraints:  # what status and the report show the front of
            self.ledger.set("constraints", constraints)

    def _start_again(self, tag: str) -> None:
        """A research whose baseline gave no metric, and that has nothing else, starts again from HEAD when
        commits were made since (the fix): its start commit, frozen files and baseline move there (the branch
        follows in _recover). Nothing was compared with the failed baseline."""
        baseline, start = self.ledger.experiment(0), self.ledger.get("start_commit")
        if baseline is None or baseline.valid() or self.ledger.count() > 1:
            return
        if not isinstance(self.store, Workspace) or self.store.head() == start:
            return
        task = self.cfg.task
        self._check_globs()
        head, frozen = self.store.begin(tag, [*task.editable, *task.frozen], task.frozen, new=False)
        with self.ledger.transaction():
            self.ledger.set("start_commit", head)
            self.ledger.set("frozen", json.dumps(frozen, sort_keys=True))
            self.ledger.update_experiment(0, commit_sha=head)
            self.ledger.restart_baseline()  # runs it made before a kill measured the old commit
            self.ledger.set("setup_done", "0")  # the fix may be in what [task] setup runs
        self.store.set_branch(tag, head)  # the research's own move: not a commit to keep aside (_recover)
        what = "gave no metric" if baseline.state == "done" else "was not finished"
        self.listener(
            "message",
            None,
            f"the baseline {what} on {(start or '')[:10]}; {head[:10]} was committed since: starting from it",
        )

    def _same_metric(self) -> None:
        """Resuming: rsi.toml's [metric], and what of [task] a run measures, must be those the research was
        measured with (a baseline that gave no metric is measured again, so they may still change)."""
        baseline = self.ledger.experiment(0)
        if baseline is not None and baseline.valid():
            refuse_changed_measure(self.ledger, self.cfg)
        with self.ledger.transaction():
            for key, value in measure_meta(self.cfg).items():
                self.ledger.set(key, value)

    def _check_globs(self) -> None:
        """A glob that matches nothing is a typo: researching without the file would waste the night."""
        head = self.store.head() if isinstance(self.store, Workspace) else ""
        for key, globs in (("editable", self.cfg.task.editable), ("frozen", self.cfg.task.frozen)):
            for pattern in globs:
                if head and not self.store.files(head, [pattern]):
                    raise UserError(f"task.{key}: {pattern!r} matches no committed file in the repository")
        if head and not editable_files(self.store, head, self.cfg):
            raise UserError("task.editable: every file it matches is frozen too (task.frozen): nothing may change")

    def _check_holdout_data(self) -> None:
        """Each `[holdout] data` entry names something (a typo would hide nothing from candidates), at every
        start (it may change between two `rsi run`s), in the commit the research started from (the user's
        checkout may be elsewhere); and not so many paths that a run's sandbox could not be built."""
        if self.cfg.holdout is None or not isinstance(self.store, Workspace):
            return
        commit = self.ledger.get("start_commit") or self.store.head()
        for entry in self.cfg.holdout.data:
            if Path(entry).is_absolute():
                if self.cfg.executor.kind == "ray":  # (the nodes have their own files; runs there are not boxed)
                    continue
                found = glob.glob(entry, recursive=True) if is_glob(entry) else [entry]
                if not any(Path(f).exists() for f in found):
                    raise UserError(f"holdout.data: {entry!r} matches nothing on this machine")
                continue
            raw = os.path.normpath(entry)
            paths = self.store.files(commit, [raw, raw + "/*"])
            if not paths:
                raise UserError(
                    f"holdout.data: {entry!r} matches no committed file (candidates see what is committed; held-out "
                    "data that is not needs no hiding)"
                )
            hidden = {_first_match(path, raw) for path in paths}  # a matched folder is hidden whole
            if len(hidden) > MAX_HIDDEN:
                raise UserError(
                    f"holdout.data: {entry!r} matches {len(hidden)} paths, too many to hide one by one; name the "
                    "folder that holds them"
                )

    def _check_sandbox_paths(self) -> None:
        """Each `[sandbox] read_only` / `writable` path exists: a run cannot see one that does not (it is bound
        only if there), so a typo would fail the runs far from its cause. Not checked with Ray (the nodes have
        their own files) or with the sandbox off (nothing is bound)."""
        box = self.cfg.sandbox
        if not box.enabled or self.cfg.executor.kind == "ray" or not isinstance(self.store, Workspace):
            return
        for name, paths in (("read_only", box.read_only), ("writable", box.writable)):
            for entry in paths:
                if not (self.store.root / entry).exists():
                    raise UserError(
                        f"sandbox.{name}: {entry!r} does not exist on this machine (a run could not see it; create it "
                        "or fix the path; relative paths are from the repository's root)"
                    )

    def _recover(self) -> None:
        """Undo what a killed orchestrator left half done; see the module docstring for why this is enough."""
        stale = self.ledger.interrupted_runs()
        for _, _, pid, started in stale:
            kill_orphan(pid, started)
        with self.ledger.transaction():
            self.ledger.drop_interrupted(stale)
            for e in self.ledger.experiments("state = 'running'"):
                self.ledger.update_experiment(e.id, state="proposed")
        self.store.recover()
        for e in self.ledger.experiments("commit_sha IS NOT NULL AND id > 0"):
            if e.commit_sha and not self.store.ensure_candidate(e.id, e.commit_sha) and e.state != "done":
                with self.ledger.transaction():  # (its refs deleted, then a `git gc`): nothing left to measure
                    self.ledger.update_experiment(
                        e.id,
                        state="done",
                        verdict="discard",
                        reason="its commit is gone from the repository (deleted refs, then a git gc): not measured",
                    )
        if isinstance(self.store, Workspace):
            if saved := self.store.restore_branch(self.tag, self.experimenter.branch_head()):
                self.listener(
                    "message",
                    None,
                    f"branch rsi/{self.tag} held a commit the research did not make: kept as {saved}, and the "
                    "branch put back where the research left it",
                )
        else:
            self.store.set_branch(self.tag, self.experimenter.branch_head())

    def champion_files(self, commit: str) -> dict[str, str]:
        """The editable files at the champion's commit (cached: they change only on a keep)."""
        cached = self._files  # one tuple, replaced whole: workers read it too
        if cached[0] != commit:
            cached = (commit, editable_files(self.store, commit, self.cfg))
            self._files = cached
        return cached[1]

    # the loop
    def _reverted(self, exp: Experiment, message: str) -> None:
        self.listener("message", None, message)
        self.listener("reverted", exp, message)

    def run(self, limits: Limits) -> None:
        try:
            with slots.using(self.slots[0]):  # the baseline's noise floor is measured in what candidates get
                self._loop(limits)
            if self.ledger.experiment(0) is not None:  # (a library caller's limits may allow no baseline)
                # the last champion's top-up came after the last candidate's check (no more runs: it has stopped)
                self.experimenter.holds(measure=False)
        finally:
            self.store.close()

    def _loop(self, limits: Limits) -> None:
        if self._unanswered is not None:  # a library caller's next run: one proposal at a time, always
            self._unanswered.wait()
            self._unanswered = None
        self.limits = limits
        self._deadline = _deadline(limits.time_budget_s)

        def budget_left() -> bool:
            interrupt.check()
            paused = self._while_paused()
            if paused and self._deadline is not None:  # a pause does not eat the time budget
                self._deadline += paused
            return not (self._spent() or self._plateau())

        for note in (self.measurer.note, self.slots_note):
            if note:
                self.listener("message", None, note)
        if isinstance(self.store, Workspace) and self.store.stale_lock:
            pid = self.store.stale_lock
            self.listener("message", None, f"the lock of rsi pid {pid}, which is no longer running, was released")
        for e in self.ledger.experiments("state = 'done'"):
            self.proposer.observe(e)
        baseline = self.ledger.experiment(0)
        if baseline is not None and baseline.state == "done" and not baseline.valid():
            # it gave no metric and the research stopped there; the task has been fixed since (or not: then it
            # stops again, with the same words)
            with self.ledger.transaction():
                self.ledger.restart_baseline()
            baseline = self.ledger.experiment(0)
            self.listener("message", None, "the baseline gave no metric last time: measuring it again")
        if baseline is None or baseline.state != "done":
            if not budget_left() and baseline is None:
                why = self._spent() or self._plateau() or "no budget is left"
                return self.listener("stop", None, f"{why}, before the baseline's first run: nothing was measured")
            self._setup()
            self._baseline()
        champion = self.experimenter.champion()
        self._holdout_silent()
        if (broken := broken_constraint(champion, self.cfg.constraints)) is not None:
            if champion.id == 0 and broken.endswith(NO_VALUE):  # its pattern matched nothing: nothing can be kept
                raise UserError(
                    f"the baseline {broken.removesuffix(': ' + NO_VALUE)} (logs under "
                    f"{self.logs / '0' if self.logs else '-'}): every candidate would be discarded for it; fix "
                    "the constraint's pattern (or file and key) in rsi.toml"
                )
            who = "the baseline" if champion.id == 0 else f"the champion, #{champion.id},"
            self.listener(
                "message",
                None,
                f"warning: {who} {broken}: a candidate is kept only within every [[constraints]] bound; "
                "check the bounds if that is not what you meant",
            )
        if self.cfg.pruning.enabled and (idle := self._pruning_idle(champion)):
            self.listener("message", None, f"warning: [pruning] is on, but {idle}: no run is stopped early")
        for e in self.ledger.experiments("state = 'done' AND reason LIKE ?", (f"{SUPERSEDED}%",)):
            if not self.ledger.experiments("parent = ? AND hypothesis LIKE ?", (e.id, f"% (rebased from #{e.id} %")):
                self._rebase(e, limits)
        if len(self.slots) > 1:
            return self._parallel(limits, budget_left)
        for e in self.ledger.experiments("state != 'done'"):
            if self._out_of_budget():  # left for the next `rsi run`, as it was
                break
            for exp_id in self._measure(e, limits):  # made before a keep landed, it may win and be rebased
                self._observe(exp_id)
        ahead: tuple[int, str, Ahead] | None = None  # a proposal made while the last experiment ran
        while budget_left():
            retest = self._retest()
            if retest is not None:  # asked for with `rsi retest`: before the next proposal
                if retest.state != "done":
                    self._experiment(retest)
                self._observe(retest.id)
                continue
            champion, head = self._best()
            files = self.champion_files(head)
            if ahead is not None and ahead[:2] == (champion.id, head):
                proposal = ahead[2].result()
            else:  # none, or made for a champion that has since been replaced: its edits would undo the keep
                if ahead is not None:
                    ahead[2].result()
                proposal = self.proposer.propose(Context(champion, files, self.ledger))
            ahead = None
            if proposal is None:
                why = self.proposer.done_reason or "it has nothing more to propose"
                return self.listener("stop", None, f"proposer {self.proposer.name} stops: {why}")
            exp = self._record_proposal(proposal, champion, files, head)
            if exp is None:
                break
            if exp.state != "done":
                if self._may_overlap(limits):
                    ahead = (champion.id, head, Ahead(self.proposer, champion, files, self.ledger.path))
                self._experiment(exp)
                # the proposer learns of this experiment only once it is not proposing; at the end of the time
                # budget it is not waited for (the next `rsi run` tells it of every experiment)
                if ahead is not None and not ahead[2].wait(self._out_of_budget):
                    self._unanswered, ahead = ahead[2], None
                    self._contended()  # what _observe would have warned of
                    break
            self._observe(exp.id)
        if ahead is not None and not ahead[2].wait(self._out_of_budget):
            self._unanswered = ahead[2]
        self.listener("stop", None, self._plateau() or self._spent() or "budget reached")

    def _parallel(self, limits: Limits, budget_left: Callable[[], bool]) -> None:
        """Several experiments at once, one per slot. The loop proposes whenever a slot is idle, so workers
        never wait for a proposer that is faster than a run; each candidate starts from the best known when it
        is proposed, and a winner whose champion was replaced meanwhile is measured again on the new best."""
        workers = Workers(self.slots)
        backlog = self.ledger.experiments("state != 'done'")  # interrupted, or rebased before a kill
        why = ""
        proposing = True
        try:
            while True:
                if backlog and self._out_of_budget():  # left for the next `rsi run`, as they were
                    backlog = []
                startable = workers.idle() and bool(backlog or (proposing and budget_left()))
                for exp_id in workers.collect(timeout=0.0 if startable else 0.5):
                    self._observe(exp_id)
                if workers.idle() and (backlog or (proposing and budget_left())):
                    if backlog:
                        exp = backlog.pop(0)
                    elif (retest := self._retest()) is not None:
                        if retest.state == "done":
                            self._observe(retest.id)
                            continue
                        exp = retest
                    else:
                        champion, head = self._best()
                        files = self.champion_files(head)
                        proposal = self.proposer.propose(Context(champion, files, self.ledger))
                        if proposal is None:
                            proposing = False
                            why = f"proposer {self.proposer.name} stops: " + (
                                self.proposer.done_reason or "it has nothing more to propose"
                            )
                            continue
                        recorded = self._record_proposal(proposal, champion, files, head)
                        if recorded is None or recorded.state == "done":
                            if recorded is not None:
                                self._observe(recorded.id)
                            continue
                        exp = recorded
                    workers.start(functools.partial(self._work, exp, limits))
                elif not workers.running():
                    break
                interrupt.check()
        except BaseException:
            workers.stop()
            raise
        workers.close()
        self.listener("stop", None, self._plateau() or why or self._spent() or "budget reached")

    def _work(self, exp: Experiment, limits: Limits) -> list[int]:
        """One worker's job: the experiment, then, if it won against a champion replaced meanwhile, its change
        rebased onto the new best and measured again, in the same slot."""
        try:
            return self._measure(exp, limits)
        finally:
            self.ledger.close()  # this thread's connection

    def _measure(self, exp: Experiment, limits: Limits) -> list[int]:
        """The experiment, then its change rebased and measured again while it wins against a champion that
        was replaced meanwhile; the ids of those finished."""
        finished = []
        next_exp: Experiment | None = exp
        while next_exp is not None:
            self._experiment(next_exp)
            finished.append(next_exp.id)
            done = self.ledger.experiment(next_exp.id)
            superseded = done is not None and done.reason.startswith(SUPERSEDED)
            next_exp = self._rebase(done, limits) if done is not None and superseded else None
        return finished

    def _rebase(self, exp: Experiment, limits: Limits) -> Experiment | None:
        """A new experiment holding `exp`'s change on the current best, child of `exp` (rejected when the change
        cannot be replayed). None when the experiment budget is spent."""
        assert exp.commit_sha is not None
        if not self.store.ensure_candidate(exp.id, exp.commit_sha):  # gone from the repository: nothing to replay
            return None
        with self.experimenter.lock:
            if self._spent():
                return None
            head, champion = self.experimenter.branch_head(), self.experimenter.champion()
            exp_id = self.ledger.next_id()
            original = re.sub(r" \(rebased from #\d+ onto #\d+\)$", "", exp.hypothesis)
            hypothesis = f"{original} (rebased from #{exp.id} onto #{champion.id})"
            sha = self.store.rebase(exp_id, exp.commit_sha, head, f"rsi candidate {exp_id}: {hypothesis}")
            files = self.champion_files(head)
            after = editable_files(self.store, sha, self.cfg) if sha else {}
            edits = {p: t for p, t in after.items() if files.get(p) != t}
            diff = unified_diff(files, edits)
            if told := literal_change(files, {**files, **edits}):  # as it reads on the new best: its "from"s
                hypothesis = f"{told} (rebased from #{exp.id} onto #{champion.id})"
            reason = "" if sha else "its change cannot be replayed as text on the new best (a deleted or binary file)"
            # the knob values it holds there (those its change left alone are the new best's)
            knobs, own = self.cfg.knobs, editable_files(self.store, exp.commit_sha, self.cfg) if exp.params else {}
            params = carried_params(exp.params, own, after, knobs.include, knobs.exclude)
            rebased = self._add(exp_id, exp.id, head, sha, exp.proposer, hypothesis, params, diff, reason)
        return None if reason else rebased

    def _retest(self) -> Experiment | None:
        """The first retest `rsi retest` asked for, as a new experiment: that experiment's change replayed on the
        current best, judged with the repeats asked for. The duplicate guard does not apply: measuring the same
        change again is the point. None when none is waiting, or the budget is spent."""
        with self.experimenter.lock:
            if self._spent():
                return None
            queue = self.ledger.get_json("retests") or []
            if not queue:
                return None
            asked = self.ledger.experiment(int(queue[0]["id"]))
            repeats = int(queue[0]["repeats"])
            exp_id = self.ledger.next_id()
            head, champion = self.experimenter.branch_head(), self.experimenter.champion()
            if asked is None or asked.commit_sha is None or not self.store.ensure_candidate(asked.id, asked.commit_sha):
                with self.ledger.transaction():  # (a commit gone from the repository cannot be measured again)
                    self._dequeue_retest()
                return None
            original = re.sub(r" \((rebased from|retest of) #\d+.*\)$", "", asked.hypothesis)
            hypothesis = f"{original} (retest of #{asked.id} on #{champion.id}, up to {repeats} runs)"
            message = f"rsi candidate {exp_id}: {hypothesis}"
            sha = self.store.rebase(exp_id, asked.commit_sha, head, message)
            files = self.champion_files(head)
            after = editable_files(self.store, sha, self.cfg) if sha else {}  # frozen files are no part of it
            edits = {p: t for p, t in after.items() if files.get(p) != t}
            diff = unified_diff(files, edits)
            if told := literal_change(files, {**files, **edits}):  # as the change reads on this champion: its
                # "from" values are the champion's now
                hypothesis = f"{told} (retest of #{asked.id} on #{champion.id}, up to {repeats} runs)"
            reason = "" if sha and diff else "its change cannot be replayed on the current best, or is in it already"
            params = {"retest_of": asked.id, "max_repeats": repeats}
            return self._add(
                exp_id, champion.id, head, sha if diff else None, RETEST, hypothesis, params, diff, reason, retest=True
            )

    def _dequeue_retest(self) -> None:
        """Drops the first waiting retest (inside a transaction: `rsi retest` may be appending meanwhile)."""
        self.ledger.set("retests", json.dumps((self.ledger.get_json("retests") or [])[1:]))

    def _while_paused(self) -> float:
        """Waits while `rsi pause` holds the research (experiments in flight run on); the seconds it waited."""
        if self.ledger.get("paused") != "1":
            return 0.0
        self.listener("message", None, "paused by `rsi pause`: no new experiment starts until `rsi resume`")
        began = _now()
        while self.ledger.get("paused") == "1":
            interrupt.check()
            time.sleep(0.5)
        self.listener("message", None, "resumed")
        return _now() - began

    def _pruning_idle(self, champion: Experiment) -> str:
        """Why early stopping cannot stop anything ("" when it can): it compares a run's progress with the
        champion's at the same step, and no run of the champion reported any."""
        if self.ledger.trajectories(champion.id, (FRESH, SCREEN, CONFIRM)):
            return ""
        pattern = self.cfg.metric.progress_pattern
        lines = f"lines matching [metric] progress_pattern {pattern}" if pattern else "no progress_pattern is set"
        return f"no run of the champion reported progress (rsi.progress(step, value); {lines})"

    def _plateau(self) -> str:
        """Why research has stopped paying (`[plateau]`), or ''. Counted from the last keep (or the baseline)."""
        rule = self.cfg.plateau
        if rule.experiments is None and rule.time is None:
            return ""
        last = self.ledger.db.execute(
            "SELECT MAX(id), MAX(finished) FROM experiments WHERE (verdict = 'keep' OR id = 0) AND state = 'done'"
        ).fetchone()
        if last[0] is None:
            return ""
        since = self.ledger.db.execute(
            "SELECT COUNT(*) FROM experiments WHERE id > ? AND state = 'done'", (last[0],)
        ).fetchone()[0]
        if rule.experiments is not None and since >= rule.experiments:
            limit = rule.experiments
            return f"plateau: {since} experiments since the last keep (#{last[0]}); [plateau] experiments = {limit}"
        idle = time.time() - float(last[1] or time.time())
        if rule.time is not None and idle >= rule.time:
            return f"plateau: {idle / 60:.1f} min since the last keep (#{last[0]}); [plateau] time = {rule.time:g}s"
        return ""

    def _spent(self) -> str:
        """Which budget allows no new experiment, in words ("" while none does): the count, the runs, or the
        time (a rebase is a new experiment)."""
        most, runs, count = self.limits.max_experiments, self.limits.max_runs, self.ledger.count()
        if most is not None and count >= most:
            return f"the experiment budget is reached: {count} experiments recorded, {most} allowed"
        if runs is not None and (done := self.ledger.run_count()) >= runs:
            return f"the run budget is spent: {done} runs recorded, {runs} allowed"
        if self._deadline is not None and _now() >= self._deadline:
            return "the time budget ran out"
        return ""

    def _out_of_budget(self) -> str:
        """What of the budget ran out ("" while some is left), asked before each run of a candidate: a time
        budget ends within one run of its end, not one whole experiment (a sequential test can take many runs).
        A run budget (`Limits.max_runs`, the meta-level's) lets the experiment under way finish."""
        if self._deadline is not None and _now() >= self._deadline and self.ledger.get("paused") != "1":
            return "the time budget ran out"  # (a pause moves the deadline when it ends)
        return ""

    def _observe(self, exp_id: int) -> None:
        done = self.ledger.experiment(exp_id)
        if done is not None and done.state == "done":
            self.proposer.observe(done)
        self._contended()

    def _contended(self) -> None:
        """Warns when runs of this session shared their cores with other processes: a run limited by time does
        less work then, and a time-limited metric measures the machine's load as well as the code. At most
        every BUSY_REPEAT_S, counting every contended run since the last warning (the ledger has each run's
        share, `busy`)."""
        first, warned, last = self._busy_seen
        row = self.ledger.db.execute(
            "SELECT COUNT(*), MAX(busy) FROM runs WHERE id > ? AND state = 'done' AND busy >= ?", (first, BUSY)
        ).fetchone()
        contended, busiest = int(row[0]), row[1]
        now = time.monotonic()
        if contended > warned and now - last >= BUSY_REPEAT_S:
            since = "since the last warning" if warned else "so far"
            self.listener(
                "message",
                None,
                f"warning: the machine is busy: in {contended - warned} run(s) {since} "
                f"other processes used {BUSY:.0%} or more of the cores the run had (up to {busiest:.0%}); a run "
                "limited by time does less work under load, so its metric then measures the load too",
            )
            self._busy_seen = (first, contended, now)

    def _may_overlap(self, limits: Limits) -> bool:
        """Propose the next candidate while this one runs: for proposers that wait on a model, with a ledger
        on disk (a second connection reads it), and when the budget leaves room for another experiment."""
        if not self.proposer.overlap or str(self.ledger.path) == ":memory:":
            return False
        return limits.max_experiments is None or self.ledger.count() < limits.max_experiments

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
        self._observe(0)
        exp = self.ledger.experiment(0)
        assert exp is not None
        if not exp.valid():
            run0 = exp.runs[0] if exp.runs else None
            raise UserError(
                f"the baseline gave no metric ({exp.status}: {run0.reason if run0 else 'no run'}); "
                "fix the task, commit the fix, and `rsi run` again: it starts from the new commit "
                f"(logs under {self.logs / '0' if self.logs else '-'})"
            )
        noise, detectable = (
            self.experimenter.noise(),
            self.judge.detectable(len(exp.valid()), self.experimenter.noise()),
        )
        if detectable is not None:
            self.ledger.set("detectable", repr(detectable))
        if noise is not None:
            smallest = f"; smallest improvement it keeps 80% of the time: {detectable:.4g}" if detectable else ""
            self.listener("message", None, f"noise sd {noise.sd:.4g} ({noise.dof} dof){smallest}")

    def _holdout_silent(self) -> None:
        """Warns when the baseline's holdout runs all gave no figure (a pattern that matches nothing): the
        held-out check would be empty for the whole research, without a word."""
        baseline = self.ledger.experiment(0)
        held = [r for r in baseline.runs if r.kind == HOLDOUT] if baseline is not None else []
        if held and all(r.metric is None for r in held):
            why = held[-1].reason or held[-1].status or "no figure"
            self.listener(
                "message",
                None,
                f"warning: the [holdout] command gave no figure on the baseline ({why}; logs under "
                f"{self.logs / '0' if self.logs else '-'}): there is no held-out check; fix [holdout] in rsi.toml",
            )

    def _best(self) -> tuple[Experiment, str]:
        """The champion and the branch head, read together: a worker's keep may land at any moment. A champion
        that did not hold is reverted first, so that no candidate is built on it."""
        with self.experimenter.lock:
            return self.experimenter.holds(measure=False), self.experimenter.branch_head()

    def _record_proposal(
        self, proposal: Proposal, champion: Experiment, files: dict[str, str], head: str
    ) -> Experiment | None:
        """The proposal as an experiment (rejected, or to measure), committed on `head`, the commit whose files
        it was made from, even if a worker has kept something since: its edits are whole files, and on the new
        head they would undo that keep. If it wins, it is superseded and rebased like any other. None if a
        worker's rebase took the last place in the budget meanwhile."""
        with self.experimenter.lock:  # a worker may be recording a rebase: one id each, within the budget
            if self._spent():
                return None
            return self._record(proposal, champion, files, head)

    def _record(self, proposal: Proposal, champion: Experiment, files: dict[str, str], head: str) -> Experiment:
        exp_id = self.ledger.next_id()
        parent_commit = head
        reason = proposal.rejected or self._reject_reason(proposal, parent_commit)
        diff = "" if reason else unified_diff(files, proposal.edits)
        if not reason and not diff:
            reason = "the edit changes nothing"
        if not reason and self._tried(diff, parent_commit):
            reason = "the same diff was already tried on this champion"
        sha = None
        if not reason:
            message = f"rsi candidate {exp_id}: {proposal.hypothesis}"
            sha = self.store.candidate(exp_id, parent_commit, proposal.edits, message)
        parent = champion.id if proposal.parent is None else proposal.parent
        by = proposal.by or self.proposer.name
        return self._add(exp_id, parent, parent_commit, sha, by, proposal.hypothesis, proposal.params, diff, reason)

    def _add(
        self,
        exp_id: int,
        parent: int,
        parent_commit: str,
        sha: str | None,
        proposer: str,
        hypothesis: str,
        params: dict[str, Any],
        diff: str,
        reason: str,
        retest: bool = False,
    ) -> Experiment:
        """Records a new experiment: to measure, or done already when `reason` says why it was rejected. With
        `retest`, the retest it answers leaves the queue in the same transaction: a kill loses neither."""
        self._changes(parent_commit).add(_normalized(diff))
        with self.ledger.transaction():
            if retest:
                self._dequeue_retest()
            self.ledger.add_experiment(
                exp_id=exp_id,
                parent=parent,
                parent_commit=parent_commit,
                commit_sha=sha,
                proposer=proposer,
                hypothesis=hypothesis,
                params=params,
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

    def _tried(self, diff: str, parent_commit: str) -> bool:
        """The same change (whitespace aside) on the same champion was already an experiment."""
        return _normalized(diff) in self._changes(parent_commit)

    def _changes(self, parent_commit: str) -> set[str]:
        """The changes tried on a champion: read from the ledger once, then kept up to date by `_add`."""
        with self._changes_lock:
            if parent_commit not in self._seen:
                rows = self.ledger.db.execute("SELECT diff FROM experiments WHERE parent_commit = ?", (parent_commit,))
                self._seen[parent_commit] = {_normalized(row[0]) for row in rows}
            return self._seen[parent_commit]

    def _reject_reason(self, proposal: Proposal, parent: str) -> str:
        if not proposal.edits:
            return "the proposal has no edits"
        if self._links[0] != parent:  # they change only with a keep
            self._links = (parent, self.store.links(parent))
        links = self._links[1]
        for path, text in proposal.edits.items():
            if path.endswith(".py"):
                try:
                    ast.parse(text)
                except SyntaxError as e:
                    return f"{path} no longer parses: {e.msg} (line {e.lineno})"
        for path in proposal.edits:
            if path.startswith("/") or ".." in Path(path).parts:
                return f"{path} is outside the repository"
            parts = Path(path).parts
            if any("/".join(parts[:k]) in links for k in range(1, len(parts) + 1)):
                return f"{path} is, or is inside, a symbolic link: edits never write through links"
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
                self.experimenter.baseline(exp, wt)
            else:
                self.experimenter.candidate(exp, wt)
        except OutOfBudget as spent:  # raised before a run its verdict waits for: it has none yet
            self.ledger.update_experiment(exp.id, state="proposed")
            left = self.ledger.experiment(exp.id)
            assert left is not None
            self.listener("pending", left, "")
            self.listener(
                "message",
                None,
                f"#{exp.id} left unfinished after {len(left.runs)} run(s): {spent}; the next `rsi run` resumes it "
                "where it stopped",
            )
            return
        finally:
            self.store.release(str(exp.id))
            self.store.release(self.experimenter.champion_worktree())
        done = self.ledger.experiment(exp.id)
        assert done is not None
        self.listener("done", done, done.reason)

    def verify(self, commit: str | None, runs: int) -> tuple[Experiment, list[float | None], str, bool]:
        """`commit`: an experiment number (12 or #12) or anything git reads as a commit; None: the champion."""
        try:
            if commit is not None and isinstance(self.store, Workspace):
                commit = resolve(self.store, self.ledger, commit)
            return self.experimenter.verify(commit, runs)
        finally:
            self.store.close()

    def summary(self) -> dict[str, Any]:
        base = self.ledger.experiment(0)
        best = self.experimenter.champion() if base else None
        return {
            "baseline": base.mean() if base else None,
            "best": best.mean() if best else None,
            "best_id": best.id if best else None,
            "experiments": self.ledger.count(),
            "branch": f"rsi/{self.tag}",
        }


def measure_meta(cfg: Config) -> dict[str, str]:
    """What the ledger records of what a run measures: its measurements compare only under the same metric (the
    progress lines early stopping reads are not part of it: pruning may be turned on or off mid-research) and
    the same command, training budget, setup and holdout command."""
    spec = json.dumps(cfg.metric.model_dump(mode="json", exclude={"progress_pattern"}), sort_keys=True)
    t, holdout = cfg.task, cfg.holdout
    task = {"command": t.command, "budget": t.budget, "setup": t.setup, "holdout": holdout and holdout.command}
    return {
        "goal": cfg.metric.goal,
        "metric": cfg.metric.name,
        "metric_spec": spec,
        "task_spec": json.dumps(task, sort_keys=True),
    }


def measure_differences(recorded: Mapping[str, str | None], now: Mapping[str, str]) -> list[tuple[str, str]]:
    """The fields of `measure_meta` records that differ, as (rsi.toml section, "field: old -> new"). A field one
    side does not have (an rsi that added one), or has no value for, is no change; one both have and differ on
    is."""
    changes = [
        ("[metric]", f"{k}: {recorded[k]!r} -> {now[k]!r}")
        for k in ("goal", "metric")
        if recorded.get(k) is not None and recorded[k] != now[k]
    ]
    for key, section in (("metric_spec", "[metric]"), ("task_spec", "[task]")):
        was, new = json.loads(recorded.get(key) or "{}"), json.loads(now[key])
        changes += [(section, f"{k}: {was[k]!r} -> {new[k]!r}") for k in sorted(new) if k in was and was[k] != new[k]]
    return changes


def refuse_changed_measure(ledger: Ledger, cfg: Config) -> None:
    """A UserError naming the first field of rsi.toml's [metric] or [task] that is not what the research in
    `ledger` was measured with: its figures would not compare with those recorded."""
    now = measure_meta(cfg)
    if changes := measure_differences({key: ledger.get(key) for key in now}, now):
        section, what = changes[0]
        raise UserError(
            f"rsi.toml's {section} is not the one this research was measured with ({what}): its figures would not "
            "compare with those recorded; put it back, or research the change apart (`rsi fork`, or a clone of "
            "the repository)"
        )


def _first_match(path: str, pattern: str) -> str:
    """The shortest leading part of a committed path that an rsi.toml glob matches (the path, if none does)."""
    parts = path.split("/")
    return next((p for i in range(1, len(parts) + 1) if matches(p := "/".join(parts[:i]), [pattern])), path)


def editable_files(store: Store, commit: str, cfg: Config) -> dict[str, str]:
    """What a proposer may change at `commit`: the files `editable` matches and `frozen` does not."""
    paths = store.files(commit, cfg.task.editable)
    return {p: store.read(commit, p) for p in paths if not matches(p, cfg.task.frozen)}


def _now() -> float:
    return time.monotonic()


def _deadline(budget: float | None) -> float | None:
    return None if budget is None else _now() + budget


def _normalized(diff: str) -> str:
    """A diff's changed lines without whitespace: the same edit written twice compares equal."""
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return hashlib.sha256("\n".join("".join(ln.split()) for ln in lines).encode()).hexdigest()


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

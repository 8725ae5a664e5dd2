"""An experiment measured to its verdict: the baseline's noise floor, a candidate's screening and replication,
the champion's re-measurement, and `rsi verify`. The loop (engine.py) decides what to try; this decides what
it is worth, with the judge, and records each run in the ledger as it happens, so a kill loses at most one run.
"""

from __future__ import annotations

import functools
import math
import operator
import statistics
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from rsi import slots
from rsi.config import Config, ConstraintConfig
from rsi.errors import UserError
from rsi.judge import (
    SHIFT_RUNS,
    Decision,
    Judge,
    Noise,
    NoisePool,
    improvement,
    pooled_noise,
    t_quantile,
    unspiked,
    with_seed_share,
)
from rsi.ledger import SELECT_KINDS, Experiment, Ledger, Run
from rsi.measure import CONFIRM, FRESH, HOLDOUT, SCREEN, VERIFY, Measurer, fresh_seed
from rsi.pruning import PRUNED, Reference, reference
from rsi.runner import BUSY, parse_metric_text, to_metric
from rsi.store import Store

RETEST = "retest"  # the proposer of an experiment `rsi retest` asked for
SUPERSEDED = "superseded:"  # the reason of a winner whose champion was replaced while it ran
CHAMPION_RUNS = 8  # fresh runs the champion is brought up to, one per candidate (see _remeasure)
NOISE_DOF = 30  # ... and for as long as the noise estimate has fewer degrees of freedom
CLEAR_GAIN = 4.0  # a keep whose improvement is at least this many noise sds (its lower bound) ...
SHORT_TOP_UP = 2  # ... gets this many top-up runs at once, the rest when a candidate first needs the precision
FRESH_FAILURES = 3  # fresh runs of a champion that may fail (no metric) in a row before it gets no more


class OutOfBudget(Exception):
    """The research's time budget ran out between two runs of a candidate: it is left unfinished, with every
    run it made recorded, and the next `rsi run` resumes it where it stopped."""


class Experimenter:
    def __init__(
        self, cfg: Config, store: Store, ledger: Ledger, measurer: Measurer, judge: Judge, tag: str, start: str
    ) -> None:
        self.cfg, self.store, self.ledger, self.measurer, self.judge = cfg, store, ledger, measurer, judge
        self.tag, self.start_commit = tag, start
        # workers decide one at a time: a keep checks that the branch has not moved since its candidate was
        # made, and the champion's re-measurements pick their seeds one at a time
        self.lock = threading.RLock()
        self._remeasuring: dict[int, set[int]] = {}  # champion id -> seeds of its re-measurements in flight
        # (commit, diff) of a retest -> the screening seeds its retests run now (finished ones are in the ledger)
        self._retesting: dict[tuple[str | None, str], set[int]] = {}
        self._noise: dict[int, tuple[tuple[int, int], Noise | None, Noise | None]] = {}  # per thread: version,
        # the pooled noise, and with the seed's share
        self._pools: dict[int, NoisePool] = {}  # per thread
        # what the research's listener is told of a revert: the experiment as it is now, and why
        self.say: Callable[[Experiment, str], None] = lambda exp, message: None
        # what of the research's budget has run out ("" while some is left): checked before each run a
        # candidate's verdict still waits for; the baseline is always measured whole (the noise floor)
        self.spent: Callable[[], str] = lambda: ""

    def champion_worktree(self) -> str:
        """Where this thread measures the champion: one checkout per slot, so workers never share one."""
        slot = slots.current()
        return "champion" if slot is None else f"champion-{slot.name}"

    def branch_head(self) -> str:
        """What the research branch must point at (the ledger decides): the last kept commit, or the commit that
        reverted it."""
        return self.ledger.branch_head() or self.start_commit

    def champion(self) -> Experiment:
        champion = self.ledger.experiment(self.ledger.last_keep())
        assert champion is not None
        return champion

    def noise(self, leave_out: int | None = None) -> Noise | None:
        """Run-to-run noise pooled over every experiment measured more than once, with the seed's share that
        replication pairs show (those of `leave_out` left out); computed again only when the ledger changed
        (SQLite's count of changes, this connection's and the others')."""
        version = self.ledger.version()
        cached = self._noise.get(threading.get_ident())
        if cached is None or cached[0] != version:
            pool = self._pools.setdefault(threading.get_ident(), NoisePool(anchor=0))  # the baseline: the floor
            noise = pool(self.ledger.select_metrics())
            cached = (version, noise, with_seed_share(noise, *self.ledger.replication_pairs()))
            self._noise[threading.get_ident()] = cached
        if leave_out is None:
            return cached[2]
        return with_seed_share(cached[1], *self.ledger.replication_pairs(), leave_out=leave_out)

    def baseline(self, exp: Experiment, wt: Path) -> None:
        """Fresh runs on seeds 1..baseline_repeats, each followed by the holdout: the noise floor."""
        assert exp.commit_sha is not None
        commit = exp.commit_sha
        for seed in range(1, self.cfg.judge.baseline_repeats + 1):
            if not _has_run(exp, FRESH, seed):
                self.measurer.measure(wt, 0, commit, FRESH, seed)
                exp = self._reload(exp)
                if _metric_at(exp, seed) is not None:
                    self._holdout(wt, exp, seed)
        n = self.cfg.judge.baseline_repeats
        self._finish(
            self._reload(exp), "baseline", Decision("keep", f"the start; its first {n} runs gave the noise floor")
        )

    def candidate(self, exp: Experiment, wt: Path) -> None:
        """Screening runs, paired with the champion's fresh seeds, until the judge decides; then replication."""
        assert exp.commit_sha is not None
        # a keep's top-up cut short (a kill, a deadline) is finished before anything is compared with it
        champion = self.champion()
        champion = self._top_up(champion, None, self._top_up_runs(champion))
        champion = self.holds(champion)  # a champion that did not hold is reverted before it judges anyone
        champion = self.built_on(exp, champion)
        deletes = deletes_code(exp.diff)
        remeasured = False
        judge, most = self.judge, self.cfg.judge.max_repeats
        if exp.proposer == RETEST and (asked := int(exp.params.get("max_repeats", 0))):
            # `rsi retest --repeats K`: its own sequential design, with up to K looks' worth of runs
            most, judge = asked, judge.with_repeats(asked)
        while True:
            champion = self._reload(champion)  # other workers' re-measurements of it count at every look
            pool = champion_pool(champion)
            screened = [r for r in exp.runs if r.kind == SCREEN]
            stopped = next((r for r in screened if r.status == PRUNED), None)
            if stopped is not None:  # stopped early, clearly behind the champion (also when resumed after a kill)
                decision = Decision("discard", stopped.reason or PRUNED)
                break
            if screened:
                metrics = [r.metric if r.status == "ok" else None for r in screened]
                pool_metrics = [r.metric for r in pool if r.metric is not None]
                decision = judge.decide(metrics, pool_metrics, self.cfg.metric.goal, self.noise(), deletes)
                undecided = decision.verdict in ("more", "inconclusive") and not remeasured
                if undecided and champion.id == self.champion().id:  # (not an older one it was made on)
                    # undecided: the champion's precision now matters (for the next candidates too, when this
                    # one has no more looks, as with max_repeats 1)
                    champion = self._top_up(champion, None, self._top_up_runs())  # a short top-up completed
                    champion, remeasured = self._remeasure(champion), True
                    pool = champion_pool(champion)
                if decision.verdict != "more":
                    break
                if len(screened) >= most:
                    decision = Decision("inconclusive", decision.reason, decision.ci)
                    break
            k = len(screened)
            # only a first run may be stopped early: once the judge asks for more, the candidate is promising
            # and its runs go to the end (a stop there would throw away what its other runs showed)
            against = self.reference(champion, judge, deletes) if k == 0 else None
            self._budget_left()
            change = (exp.parent_commit, exp.diff) if exp.proposer == RETEST else None
            with self.lock:  # a retest of the same change another worker runs now takes its own seeds
                taking = self._retesting.setdefault(change, set()) if change else set()
                seed = screen_seed(pool, exp.id, k, self._retested_seeds(exp) | taking | {r.seed for r in screened})
                taking.add(seed)
            try:
                self.measurer.measure(wt, exp.id, exp.commit_sha, SCREEN, seed, against)
            finally:
                with self.lock:
                    taking.discard(seed)
            exp = self._reload(exp)
        if decision.verdict == "keep":  # the bounds on secondary figures, before replication spends more runs
            decision = self._within_constraints(exp, decision)
        # a winner made on a champion the branch has moved on from is superseded in _finish, and its change
        # measured again on the new one: replicating it against the old one would spend runs for nothing
        settled = decision.verdict == "keep" and not self._moved_on(exp)
        if settled and self.judge.replicate:
            decision = self._replicate(exp, wt, champion)
            if decision.verdict == "keep":
                decision = self._within_constraints(self._reload(exp), decision)
        if settled and decision.verdict == "keep":  # the holdout after its last run, whose output it may read
            self._holdout_last(self._reload(exp), wt)
        if self._finish(self._reload(exp), decision.verdict, decision, champion) == "keep":
            kept = self._reload(exp)  # after the keep landed: a deadline now cannot lose it
            self._top_up(kept, wt, self._top_up_runs(kept))

    def _moved_on(self, exp: Experiment, head: str | None = None) -> bool:
        """Whether the branch (its `head`, when the caller has it) has moved on from the commit `exp` was made on
        (a keep or a revert since)."""
        return exp.parent_commit is not None and exp.parent_commit != (head or self.branch_head())

    def built_on(self, exp: Experiment, champion: Experiment) -> Experiment:
        """The champion `exp` was made from, which it is judged against: its change is what is measured, and
        a winner whose champion was replaced since is rebased onto the new one (`_finish`). It differs from the
        current `champion` for a candidate proposed before a keep landed and started after (cut by the time
        budget or a kill, and resumed; made by a slow proposer while another worker kept something). A
        champion reverted since is no longer one: then the current one judges."""
        made_on = exp.parent_commit
        if made_on is None or made_on in (champion.kept_commit, champion.commit_sha, self.branch_head()):
            return champion
        restored = self.ledger.restored_by(made_on)  # made on a revert commit: the champion it put back
        if restored is not None:
            made = self.ledger.experiment(restored)
        elif kept := self.ledger.experiments("verdict = 'keep' AND kept_commit = ?", (made_on,)):
            made = kept[0]
        else:
            made = self.ledger.experiment(0) if made_on == self.start_commit else None
        if made is None or made.verdict not in ("keep", "baseline") or (made.id == 0 and not made.valid()):
            return champion
        return made

    def _retested_seeds(self, exp: Experiment) -> set[int]:
        """The screening seeds of the other measurements of a retest's change on the same commit (the original,
        other retests; asked at every look, as another worker may be running one now, whose runs in flight are
        in `_retesting`): it pairs with the champion's other seeds, then fresh ones (the same seeds would repeat
        the same runs)."""
        if exp.proposer != RETEST:
            return set()
        others = self.ledger.experiments("parent_commit IS ? AND id != ?", (exp.parent_commit, exp.id))
        return {r.seed for e in others if e.diff == exp.diff for r in e.runs if r.kind == SCREEN}

    def reference(self, champion: Experiment, judge: Judge, deletes: bool) -> Reference | None:
        """What a first screening run is stopped early against, with `[pruning]` on: the champion's level from
        its unbiased (fresh) runs, their spread pooled with its other runs'; from all of its runs where it has
        under two fresh ones. Held to what `judge` (the one deciding this candidate) calls detectable for it
        (`spare = "detectable"`): the smallest gain it keeps 80% of the time, or for a deletion under the
        simplicity rule a level at or below the champion's; or to the champion's level (`spare = "par"`)."""
        rule = self.cfg.pruning
        if not rule.enabled:
            return None
        lead, noise = 0.0, self.noise()
        if rule.spare == "detectable" and noise is not None and noise.sd > 0:
            lead = (judge.detectable(len(champion_pool(champion)), noise, deletes) or 0.0) / noise.sd
        args = (self.cfg.metric.goal, rule.confidence, rule.warmup, rule.looks)
        level, spread = (self.ledger.trajectories(champion.id, kinds) for kinds in ((FRESH,), (SCREEN, CONFIRM)))
        fresh = reference(level, *args, spread, lead)
        return fresh or reference(self.ledger.trajectories(champion.id), *args, lead=lead)

    def _within_constraints(self, exp: Experiment, decision: Decision) -> Decision:
        """The decision, or a discard naming the first `[[constraints]]` bound the candidate breaks (its mean
        over its valid runs; a figure it never reported breaks it too, as nothing shows it is within)."""
        broken = broken_constraint(exp, self.cfg.constraints)
        if broken is None:
            return decision
        if broken.endswith(NO_VALUE):
            broken += f" ({decision.reason})"
        return Decision("discard", broken, decision.ci)

    def _remeasure(self, champion: Experiment) -> Experiment:
        """Periodic re-measurement: one more fresh run of the champion for each candidate the judge could not
        decide at once, while the champion has under CHAMPION_RUNS fresh runs or the noise estimate under
        NOISE_DOF degrees of freedom. Precision is bought where a decision needs it: a few runs per keep."""
        if not self.judge.replicate or champion.commit_sha is None:
            return champion

        def enough(fresh: int) -> bool:
            noise = self.noise()
            return fresh >= CHAMPION_RUNS and noise is not None and noise.dof >= NOISE_DOF

        self._fresh_run(champion, None, 5000, enough)
        return self._reload(champion)

    def _fresh_run(self, exp: Experiment, wt: Path | None, first: int, enough: Callable[[int], bool]) -> Path | None:
        """One more fresh run of `exp`, unless `enough` says its fresh runs (those with a metric, and those in
        flight) suffice, or its last FRESH_FAILURES gave none (a champion that fails this often gets no more);
        the worktree it ran in (checked out when `wt` is None), or None when it ran none. Its seed is the first
        from `first` on that no run of it has or is taking, so workers doing this at once each take their own,
        and a run made before an interruption is not repeated."""
        commit = exp.commit_sha
        assert commit is not None
        if self.spent():  # the time is up: a top-up cut short is finished by the next candidate
            return None
        with self.lock:
            exp = self._reload(exp)
            running = self._remeasuring.setdefault(exp.id, set())
            runs = sorted((r for r in exp.runs if r.kind == FRESH), key=lambda r: r.id)
            valid = sum(r.metric is not None for r in runs)
            failed = trailing_failures(runs)
            taken = {r.seed for r in runs}
            if failed >= FRESH_FAILURES or enough(valid + len(running - taken)):  # a run just recorded: once
                return None
            taken |= running
            k = first
            while fresh_seed(exp.id, k) in taken:
                k += 1
            seed = fresh_seed(exp.id, k)
            running.add(seed)
        try:
            wt = wt or self.store.checkout(self.champion_worktree(), commit)
            self.measurer.measure(wt, exp.id, commit, FRESH, seed)
        finally:
            with self.lock:
                running.discard(seed)
        return wt

    def holds(self, champion: Experiment | None = None, measure: bool = True) -> Experiment:
        """The champion, or the one before it when this one did not hold on the fresh runs it had since it
        landed (none of which decided its keep): its last FRESH_FAILURES failed, or they show it worse than the
        champion it replaced (`Judge.holds`). Then it is reverted: a commit on the branch with the tree of the
        one before it (history kept), its verdict discard with `reverted` and the reason. The champion is the
        last keep, so a champion a revert put back is checked in turn, and reverted too if it stops holding.
        When its fresh runs cannot tell yet (mostly far worse, too few for a shift), it gets one more fresh run
        first: at most SHIFT_RUNS in a call, none once the time budget is spent, none while another worker's is
        under way, and none without `measure` (a caller holding the lock, a research that has stopped)."""
        champion = champion or self.champion()
        extra = 0
        while (held := self._held(champion)) is None:
            seen = sum(r.kind == FRESH and r.metric is not None for r in champion.runs)
            if not measure or extra >= SHIFT_RUNS:
                return champion
            if self._fresh_run(champion, None, 5000, functools.partial(operator.lt, seen)) is None:
                return champion
            extra, champion = extra + 1, self._reload(champion)
            if self.ledger.last_keep() != champion.id:  # another worker reverted it, or landed a keep, meanwhile
                return self.champion()
        return held

    def _held(self, champion: Experiment) -> Experiment | None:
        """`holds` at one look: the champion, the one a revert put back, or None for one more fresh run first."""
        if champion.id == 0 or champion.kept_commit is None:
            return champion
        # runs on a busy machine are left out: a time-limited run does less work under load, and a champion is
        # not reverted for the load it met (its predecessor's runs may have met none)
        fresh = sorted((r for r in champion.runs if r.kind == FRESH and not contended(r)), key=lambda r: r.id)
        valid = [r.metric for r in fresh if r.status == "ok" and r.metric is not None]
        failed = trailing_failures(fresh)
        if failed < FRESH_FAILURES and len(valid) < 2:
            return champion  # nothing to judge yet (the common case before its top-up lands)
        with self.lock:
            before = self.ledger.experiment(self.ledger.last_keep(before=champion.id))
            assert before is not None
            if failed >= FRESH_FAILURES:
                why = f"its last {failed} fresh runs failed"
            else:
                previous = [r.metric for r in champion_pool(before) if r.metric is not None and not contended(r)]
                if not previous:
                    return champion
                if improvement(statistics.fmean(valid), statistics.fmean(previous), self.cfg.metric.goal) >= 0:
                    return champion  # not worse on its fresh runs: nothing to test (and no pool to compute)
                # the noise without its own runs: those that kept it and those since, were it not to hold, would
                # spread as two levels, and make the test too wide to see it
                others = {k: v for k, v in self.ledger.select_metrics().items() if k != champion.id}
                noise = NoisePool(anchor=0)(others)
                # what tells a spike in fresh runs: every run of their code (its screening and confirmation runs
                # too), not the fresh ones alone, of which two starved runs in three would be the median
                among = usable_runs(champion), usable_runs(before)
                held = self.judge.holds(valid, previous, self.cfg.metric.goal, noise, among)
                if held.verdict == "more":
                    return None
                if held.verdict != "discard":
                    return champion
                why = f"{held.reason} against #{before.id}"
            if self.ledger.last_keep() != champion.id:  # another worker reverted it, or landed a keep, meanwhile
                return self.champion()
            head = self.branch_head()  # its keep, or the revert that put it back
            tree = before.kept_commit or before.commit_sha or self.start_commit
            message = f"rsi: revert experiment {champion.id}, which did not hold after it landed: {why}"
            sha = self.store.keep(tree, head, message)
            with self.ledger.transaction():
                self.ledger.update_experiment(
                    champion.id,
                    verdict="discard",
                    reverted=1,
                    revert_commit=sha,
                    reason=f"{champion.reason}; reverted after it landed: {why}",
                    moved=self.ledger.next_move(),
                )
            self.store.set_branch(self.tag, sha)
        self.say(
            self._reload(champion), f"#{champion.id} reverted ({sha[:10]}): it did not hold after it landed: {why}"
        )
        return self.champion()

    def _budget_left(self) -> None:
        if why := self.spent():
            raise OutOfBudget(why)

    def _replicate(self, exp: Experiment, wt: Path, champion: Experiment) -> Decision:
        """Candidate and champion on the same fresh seeds, new to both, a pair at a time until the judge
        decides; the champion runs first so that the candidate's own run is the last one in its worktree (the
        holdout reads what it produced)."""
        assert champion.commit_sha is not None and exp.commit_sha is not None
        champ_wt = self.store.checkout(self.champion_worktree(), champion.commit_sha)
        seeds: list[int] = []
        confirmed = Decision("more", "")
        for seed in (fresh_seed(exp.id, j) for j in range(1, max(self.judge.replicate, 1) + 1)):
            if not (_has_run(champion, FRESH, seed) and _has_run(exp, CONFIRM, seed)):
                self._budget_left()
            if not _has_run(champion, FRESH, seed):
                self.measurer.measure(champ_wt, champion.id, champion.commit_sha, FRESH, seed)
            if not _has_run(exp, CONFIRM, seed):
                self.measurer.measure(wt, exp.id, exp.commit_sha, CONFIRM, seed)
            exp, champion = self._reload(exp), self._reload(champion)
            seeds.append(seed)
            cand = [_metric_at(exp, s, CONFIRM) for s in seeds]
            champ = [_metric_at(champion, s) for s in seeds]
            noise = self.noise(leave_out=exp.id)  # its own pairs never choose how they are tested
            # what tells a spike in a pair (the first one too): the candidate's valid runs, the champion's fresh ones
            among = exp.valid(), [r.metric for r in champion_pool(champion) if r.metric is not None]
            goal, deletes = self.cfg.metric.goal, deletes_code(exp.diff)
            confirmed = self.judge.confirm(cand, champ, goal, noise, deletes, among)
            if confirmed.verdict != "more":
                break
        if confirmed.verdict != "keep":
            self.ledger.update_experiment(exp.id, reverted=1)
            return Decision("discard", f"screening kept it, but it {confirmed.reason}", confirmed.ci)
        return confirmed

    def _top_up_runs(self, champion: Experiment | None = None) -> int:
        """Fresh runs a new champion is brought up to: baseline_repeats; SHORT_TOP_UP for one kept by a gain
        CLEAR_GAIN noise sds clear of zero. That is early tuning, where most candidates are decided at once (the
        first undecided one completes the top-up), and a run spent on the champion's level is one not spent on
        the next gain. Runs only change how precise the comparison is: a t bound holds with any number."""
        if not self.judge.replicate:
            return 0
        full, noise = self.cfg.judge.baseline_repeats, self.noise()
        ci = champion.ci if champion is not None and champion.id > 0 else None
        if ci is None or ci[0] >= ci[1] or noise is None or noise.sd <= 0:  # a point: decided without noise
            return full
        return min(SHORT_TOP_UP, full) if ci[0] >= CLEAR_GAIN * noise.sd else full

    def _top_up(self, exp: Experiment, wt: Path | None, runs: int) -> Experiment:
        """A new champion gets `runs` fresh runs (_top_up_runs), used in no decision about itself: what later
        candidates are compared with, free of the winner's curse of the runs that kept it (its screening and
        confirmation runs were selected for being good). Run right after the keep lands, and finished by the
        next candidate if that was cut short; workers doing it at once each take a seed of their own."""
        if exp.commit_sha is None:
            return exp
        while (used := self._fresh_run(exp, wt, self.judge.replicate + 1, lambda fresh: fresh >= runs)) is not None:
            wt = used  # checked out once, not for every run
        return self._reload(exp)

    def _holdout_last(self, exp: Experiment, wt: Path) -> None:
        last = max((r for r in exp.runs if r.kind in SELECT_KINDS), key=lambda r: r.id, default=None)
        if last is not None and last.status == "ok" and not _has_run(exp, HOLDOUT, last.seed):
            self._holdout(wt, exp, last.seed)

    def _finish(self, exp: Experiment, verdict: str, decision: Decision, champion: Experiment | None = None) -> str:
        """Records the verdict (a keep lands on the branch here) and returns it: a keep may become a discard."""
        # a pruned run was stopped for being behind, not for failing: the verdict's reason says so
        failed = (r.status for r in exp.runs if r.kind in SELECT_KINDS and r.status not in ("ok", PRUNED))
        status = next(failed, "ok") or "ok"
        reason = decision.reason
        with self.lock:
            kept_commit = None
            if verdict == "keep" and status == "ok" and champion is not None:
                assert exp.commit_sha is not None
                head = self.branch_head()
                if self._moved_on(exp, head):
                    # it beat a champion that another worker's keep has since replaced: what it was measured
                    # against is not what the branch holds, so it is not kept on these figures
                    verdict = "discard"
                    reason = (
                        f"{SUPERSEDED} it beat #{champion.id} ({decision.reason}), but #{self.champion().id} was "
                        "kept meanwhile; its change is measured again on top of that"
                    )
                else:
                    before, after = champion.mean(), exp.mean()
                    message = (
                        f"{exp.hypothesis}\n\n{self.cfg.metric.name}: {before:.6g} -> {after:.6g} "
                        f"(experiment {exp.id}, {len(exp.valid())} runs; {decision.reason})"
                    )
                    kept_commit = self.store.keep(exp.commit_sha, head, message)
            elif verdict == "keep" and champion is not None:
                verdict = "discard"
            ci = decision.ci or (None, None)
            with self.ledger.transaction():
                self.ledger.update_experiment(
                    exp.id,
                    state="done",
                    status=status,
                    verdict=verdict,
                    reason=reason,
                    kept_commit=kept_commit,
                    ci_low=ci[0],
                    ci_high=ci[1],
                    **({"moved": self.ledger.next_move()} if kept_commit else {}),
                )
            if kept_commit:
                self.store.set_branch(self.tag, kept_commit)
        return verdict

    def _holdout(self, wt: Path, exp: Experiment, seed: int) -> None:
        if self.measurer.has_holdout and exp.commit_sha:
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
        exp = self._reload(exp)
        fresh = [r.metric if r.status == "ok" else None for r in exp.runs if r.kind == VERIFY][done:]
        valid = [m for m in fresh if m is not None]
        recorded, noise = exp.valid(), self.noise()
        if not valid or not recorded:
            return exp, fresh, "no valid run to compare", False
        noise = noise or pooled_noise([recorded, valid])  # the research has no estimate yet: these runs'
        before, now = statistics.fmean(recorded), statistics.fmean(valid)
        means = f"recorded {before:.6g}, now {now:.6g}"
        if noise is None:
            return exp, fresh, f"cannot judge: {means}, and no estimate of the noise (give --runs 2 or more)", False
        if noise.sd == 0:
            return exp, fresh, means, abs(now - before) <= 1e-12 * max(1.0, abs(before))
        # spikes on either side are left out, as they are of the noise the interval is made of; told among every
        # run of the code, recorded and new (two starved runs of three new ones would be their own median)
        code, seen = [*recorded, *valid], len(valid) + len(recorded)
        valid = unspiked(valid, noise.scale, among=code) or valid
        recorded = unspiked(recorded, noise.scale, among=code) or recorded
        diff = statistics.fmean(valid) - statistics.fmean(recorded)
        half = t_quantile(0.5 + self.cfg.judge.confidence / 2, noise.dof) * noise.sd
        half *= math.sqrt(1 / len(valid) + 1 / len(recorded))
        left = seen - len(valid) - len(recorded)
        sentence = (
            f"recorded {statistics.fmean(recorded):.6g} over {len(recorded)} runs, now {statistics.fmean(valid):.6g}"
            f" over {len(valid)}: difference {diff:+.4g}, allowed +-{half:.4g}"
            + (f" ({left} spike run(s) left out)" if left else "")
        )
        return exp, fresh, sentence, abs(diff) <= half

    def _find(self, commit: str | None) -> Experiment:
        if commit is None:
            return self.champion()
        if self.branch_head().startswith(commit):  # the branch: its last keep, or what a revert put back
            return self.champion()
        for e in self.ledger.experiments():
            if any(c and c.startswith(commit) for c in (e.kept_commit, e.commit_sha)):
                return e
        for e in self.ledger.experiments("revert_commit IS NOT NULL"):
            if e.revert_commit and e.revert_commit.startswith(commit):
                raise UserError(
                    f"commit {commit} reverted experiment {e.id}: verify the experiment it put back, by its number"
                )
        raise UserError(f"no experiment of this research has commit {commit}")


def champion_pool(champion: Experiment) -> list[Run]:
    """The champion's unbiased runs; a judge without replication (the autoresearch rule) has only its screening
    runs to offer."""
    fresh = [r for r in champion.runs if r.kind == FRESH and r.status == "ok" and r.metric is not None]
    return fresh or [r for r in champion.runs if r.kind in SELECT_KINDS and r.status == "ok" and r.metric is not None]


def screen_seed(pool: Sequence[Run], exp_id: int, k: int, used: Collection[int] = ()) -> int:
    """The seed of a candidate's screening run k (from 0): that of the first of the champion's runs whose seed
    is not `used` (those it ran on already, and a retest's taken ones), so that the two pair up; past the
    champion's runs, a fresh one. (Not the champion's run k's: with several workers a champion run started
    earlier may finish later, and land in the pool before seeds the candidate has used.)"""
    left = [r for r in pool if r.seed not in used]
    return left[0].seed if left else fresh_seed(exp_id, 100 + k)


def usable_runs(exp: Experiment) -> list[float]:
    """The metrics of its runs of the task's command that gave one on a machine not contended."""
    runs = (r for r in exp.runs if r.kind in SELECT_KINDS and r.status == "ok" and not contended(r))
    return [r.metric for r in runs if r.metric is not None]


def contended(run: Run) -> bool:
    """Whether other processes kept the run's cores busy BUSY of the time or more."""
    return run.busy is not None and run.busy >= BUSY


def trailing_failures(runs: Sequence[Run]) -> int:
    """How many of the last runs (in the order given) gave no metric, in a row."""
    return len(runs) - max((i + 1 for i, r in enumerate(runs) if r.metric is not None), default=0)


def _has_run(exp: Experiment, kind: str, seed: int) -> bool:
    return any(r.kind == kind and r.seed == seed for r in exp.runs)


def _metric_at(exp: Experiment, seed: int, kind: str = FRESH) -> float | None:
    return next((r.metric for r in exp.runs if r.kind == kind and r.seed == seed and r.status == "ok"), None)


def deletes_code(diff: str) -> bool:
    """More lines removed than added (blank lines aside): the simplicity rule may keep it at no gain."""
    lines = diff.splitlines()
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++") and x[1:].strip())
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---") and x[1:].strip())
    return removed > added


NO_VALUE = "no value to check it on"


def broken_constraint(exp: Experiment, constraints: Sequence[ConstraintConfig]) -> str | None:
    """The first `[[constraints]]` bound the experiment breaks, in words, or None (a figure it never reported
    breaks it too, as nothing shows it is within)."""
    for c in constraints:
        value = constraint_value(exp, c)
        if value is None:
            return f"reports nothing for constraint {c.name}: {NO_VALUE}"
        if c.max is not None and value > c.max:
            return f"breaks constraint {c.name}: {value:.4g} > max {c.max:g}"
        if c.min is not None and value < c.min:
            return f"breaks constraint {c.name}: {value:.4g} < min {c.min:g}"
    return None


def constraint_value(exp: Experiment, c: ConstraintConfig) -> float | None:
    """The experiment's figure for a constraint: the mean over its valid runs of the task's command."""
    values: list[float] = []
    for r in exp.runs:
        if r.kind not in SELECT_KINDS or r.status != "ok":
            continue
        if c.source is not None:
            got = getattr(r, c.source)
        else:
            assert c.pattern is not None
            raw = parse_metric_text(c.pattern, r.stdout_tail, r.stderr_tail)
            got = to_metric(raw) if raw is not None else None
        if got is not None:
            values.append(float(got))
    return statistics.fmean(values) if values else None

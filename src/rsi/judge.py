"""The judge decides keep / discard from measurements; it never sees a proposer or held-out numbers.

`SequentialJudge` (the default) decides in two independent stages, so that one lucky run never lands on the
research branch:

1. Screening. The candidate runs once, and is looked at after 1, 2, 4, 8, ... runs up to `max_repeats`. At
   each look its improvement over the champion's unbiased ("fresh") runs gets a one-sided t bound, with the
   noise sd pooled over every repeated experiment. It passes when the lower bound clears `min_delta` at level
   alpha_s / K (Bonferroni over the K looks: valid however often we look). It is discarded for futility when
   even an optimistic upper bound (90% after one run, which is weak evidence; 80% later) stays below the
   smallest effect the design can detect, or below `min_delta`. Otherwise it runs again; at `max_repeats` it
   is inconclusive.
2. Replication. A candidate that passed and the champion both run `replicate` fresh seeds (the same seeds for
   both, new to both); it is kept only if that fresh comparison alone clears level alpha_c. It is looked at
   twice: after the first pair at a tenth of alpha_c, where an effect many noise sds large is kept at once
   (early tuning, where most of a budget would otherwise go to replicating the obvious), and after the last
   at the rest. The last look is a paired t test on the candidate's own pairs where earlier candidates' pairs
   showed that the seed explains enough of the noise for that to be the more powerful test (with_seed_share).

Spikes, single runs far from the other runs of their code, are left out where they would mislead (`spikes`).

The stages use disjoint runs, so a candidate with no real effect is kept with probability at most
alpha_s * alpha_c = 1 - confidence (alpha_s = alpha_c = sqrt(1 - confidence): 0.1 each for 0.99). Over a night
of 500 candidates that is at most 5 false keeps expected in the worst case, and benchmarks/judge.py measures
0.14% to 0.33% (one or two in a night). The constants below were chosen with that benchmark: at most 3 runs per
candidate on a realistic mix, and at least 80% of true 2-sigma gains kept, under Gaussian and heavy tails.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Goal = Literal["minimize", "maximize"]
Verdict = Literal["keep", "discard", "inconclusive", "more"]
POWER = 0.8  # the power at which the smallest detectable effect is quoted
SIMPLER_RUNS = 4  # runs before the simplicity rule may keep a deletion
FUTILITY = 1.0  # discard when the optimistic bound is below this fraction of the smallest detectable effect
FIRST_LOOK = 0.9  # ... an optimistic bound at this level after one run: one run discards only the clearly worse
EARLY_CONFIRM = 0.1  # the share of replication's alpha spent after its first pair: a large effect lands at once
# an experiment whose runs spread more than the others' with a chance under this, were they alike, and by more
# than this ratio of variances (seven times their sd: not a tail of heavy-tailed noise), is left out of the pooled
# noise: code that blows up on some seeds has a noise of its own, and one such pair of runs would otherwise make
# every later comparison too wide to keep anything
OUTLIER_LEVEL = 1e-6
OUTLIER_RATIO = 50.0
# a run further than this many robust sds from the median of the runs of its code is a spike: a
# time-limited run that another process starved of CPU, a node that stalled (see `spikes`)
SPIKE_SDS = 6.0
SHIFT_RUNS = 3  # a keep's fresh runs far worse than its others, most of them and this many: a shift, not spikes
MEDIAN_GAP = 0.6745 * math.sqrt(2)  # the median distance between two runs of one code, in sds (Gaussian noise)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    ci: tuple[float, float] | None = None  # bounds on the improvement (positive is better) at this look


@dataclass(frozen=True)
class Noise:
    """The run-to-run standard deviation of the metric, pooled, with its degrees of freedom, spikes left out; and
    `shared`, the part of its variance a seed gives every commit alike (0 until replication pairs show it; see
    with_seed_share)."""

    sd: float
    dof: int
    shared: float = 0.0
    scale: float | None = None  # a robust sd (from the median distance of two runs of one code): spikes' yardstick


def improvement(candidate: float, champion: float, goal: Goal) -> float:
    """How much better the candidate is (positive is better), whatever the goal."""
    return champion - candidate if goal == "minimize" else candidate - champion


@functools.lru_cache(maxsize=4096)
def t_quantile(level: float, dof: int) -> float:
    """Student's t quantile; asked for the same few levels and degrees of freedom again and again."""
    from scipy import stats  # (here: it takes a second to import, which commands that judge nothing skip)

    return float(stats.t.ppf(level, dof))


def spikes(
    runs: Sequence[float], scale: float | None, goal: Goal = "maximize", among: Sequence[float] = ()
) -> list[int]:
    """For each run, 1 (-1) when it is more than SPIKE_SDS robust sds (`scale`) better (worse) than the median
    of the runs of its code (`among`, all of them, of which `runs` are some; default `runs` alone), else 0.
    The median counts the run itself, so that with three runs the far one cannot drag the reference towards
    it; two runs twice that far apart are both spikes (neither can be told from the other); a run alone never
    is one.

    A spike is a run that another process starved of CPU, or a node that stalled: one such run in 58 doubled
    the pooled noise sd on tinygpt. Spikes are left out of the pooled noise (NoisePool), and a comparison
    leaves out those that would count in the candidate's favour (its own better ones, the champion's worse
    ones) and keeps the others, which only count against it: a spike told apart never helps a keep."""
    code = among if len(among) >= len(runs) else runs  # (`among` holds `runs`)
    if not scale or len(code) < 2 or max(*code, *runs) - min(*code, *runs) <= SPIKE_SDS * scale:
        return [0] * len(runs)
    middle, flags = statistics.median(code), []
    for x in runs:
        gain = improvement(x, middle, goal)
        flags.append(0 if abs(gain) <= SPIKE_SDS * scale else 1 if gain > 0 else -1)
    return flags


def unspiked(
    runs: Sequence[float],
    scale: float | None,
    goal: Goal = "maximize",
    side: int | None = None,
    among: Sequence[float] = (),
) -> list[float]:
    """`runs` without their spikes (`spikes`, told `among` the runs of their code) on one `side` (1: the better
    ones, -1: the worse ones), or on both (None)."""
    flags = spikes(runs, scale, goal, among)
    return [x for x, f in zip(runs, flags, strict=True) if not f or (side is not None and f != side)]


def pooled_noise(samples: Sequence[Sequence[float]]) -> Noise | None:
    """Pooled within-experiment sd of repeated runs of the same code (one sequence per experiment), outliers
    left out (see NoisePool)."""
    return NoisePool()(dict(enumerate(samples)))


@functools.lru_cache(maxsize=4096)
def f_quantile(level: float, dfn: int, dfd: int) -> float:
    from scipy import stats

    return float(stats.f.ppf(level, dfn, dfd))


def _floor2(n: int) -> int:
    """The largest power of two at most n: F quantiles fall as the denominator's dof grows, so a bound taken at
    this one is a little stricter, and only a few distinct ones are ever computed."""
    return 1 << (n.bit_length() - 1)


def _squares(runs: Sequence[float]) -> float:
    mean = math.fsum(runs) / len(runs)
    return math.fsum((x - mean) ** 2 for x in runs)  # floats: statistics.variance is exact and slow


class NoisePool:
    """`pooled_noise` of experiments whose runs only ever grow in number, called again and again as they do:
    an experiment's sum of squares is computed again only when it has new runs. Same figure, to the bit.

    Pooling assumes every code's runs spread alike. Experiments whose spread is too large for that are left out,
    and named in `left_out`: a candidate whose training diverged on one seed of two would otherwise widen every
    later interval many times over, and nothing could be kept for the rest of the research. Outliers are
    sought as the generalized ESD test seeks them, so that two of them cannot hide each other: the experiments
    in order of their variance, the largest first, each tested (an F test at OUTLIER_LEVEL, and OUTLIER_RATIO
    times the variance at least) against the pool without it and without every one before it; those up to the
    last that fails the test are left out. The search stops at the first that spreads no more than the rest, or
    where it would leave out half of the degrees of freedom. The `anchor` (the baseline, whose runs are the
    noise floor) is never left out: if it is the noisy one, so is the task.

    Before that, spikes are left out (`spikes`, against a robust sd: the median distance between successive runs
    of one code), counted in `spikes`."""

    def __init__(self, anchor: int | None = None) -> None:
        # experiment -> (runs, sum of squared deviations, distances between successive runs)
        self._seen: dict[int, tuple[int, float, list[float]]] = {}
        self.anchor = anchor
        self.left_out: list[int] = []
        self.spikes = 0  # runs left out as spikes (see `spikes`)

    def __call__(self, samples: Mapping[int, Sequence[float]]) -> Noise | None:
        seen: dict[int, tuple[int, float, list[float]]] = {}
        for exp_id, runs in samples.items():
            n = len(runs)
            if n >= 2:
                known = self._seen.get(exp_id)
                if known is None or known[0] != n:
                    gaps = [abs(a - b) for a, b in itertools.pairwise(runs)]
                    known = self._seen[exp_id] = (n, _squares(runs), gaps)
                seen[exp_id] = known
        gaps = [g for _, _, some in seen.values() for g in some]
        scale = statistics.median(gaps) / MEDIAN_GAP if gaps else None
        parts: list[tuple[int, int, float]] = []  # (experiment, dof, sum of squares)
        self.spikes = 0
        for exp_id, (n, squares, _) in seen.items():
            clean = unspiked(samples[exp_id], scale)  # out of the spread too: they are not the code's noise
            self.spikes += n - len(clean)
            if len(clean) == n:
                parts.append((exp_id, n - 1, squares))
            elif len(clean) >= 2:
                parts.append((exp_id, len(clean) - 1, _squares(clean)))
        num, dof = math.fsum(s for _, _, s in parts), sum(d for _, d, _ in parts)
        suspects = sorted((p for p in parts if p[0] != self.anchor), key=lambda p: p[2] / p[1], reverse=True)
        rest, rest_dof, out = num, dof, 0
        for i, (_, d, s) in enumerate(suspects):
            rest, rest_dof = rest - s, rest_dof - d
            if rest_dof < 1 or rest <= 0 or 2 * rest_dof < dof or s / d <= rest / rest_dof:
                break
            if s / d > rest / rest_dof * max(OUTLIER_RATIO, f_quantile(1 - OUTLIER_LEVEL, d, _floor2(rest_dof))):
                out = i + 1
        self.left_out = [exp_id for exp_id, _, _ in suspects[:out]]
        if out:
            kept = [(d, s) for exp_id, d, s in parts if exp_id not in self.left_out]
            num, dof = math.fsum(s for _, s in kept), sum(d for d, _ in kept)
        return Noise(math.sqrt(max(num, 0.0) / dof), dof, scale=scale) if dof else None


PAIRED_DOF = 4  # replication pairs' degrees of freedom before the seed's share of the noise is estimated
SHARED_LEVEL = 0.9  # the confidence that the noise a seed leaves unexplained is at most what is assumed


def with_seed_share(
    noise: Noise | None,
    confirm: Mapping[int, Mapping[int, float]],
    fresh: Mapping[int, Mapping[int, float]],
    leave_out: int | None = None,
) -> Noise | None:
    """`noise` with the seed's share, from replication: a candidate's confirmation runs (`confirm`: experiment
    -> seed -> run) and the fresh runs of the champion that judged it on the same seeds (`fresh`: seed ->
    experiment -> run; replication's seeds are the candidate's own, new to both, so no two candidates share a
    pair). Within one candidate the differences vary by the noise the seed does not explain, and by how
    differently the two codes take the seed. Pooled over candidates, with that unexplained part taken at its
    SHARED_LEVEL upper bound (Gaussian: heavier tails claim a share more often), once PAIRED_DOF degrees of
    freedom show it. It only chooses a test: the judge pairs a candidate's replication on its own pairs'
    spread, so a change that takes the seed differently is judged by its own spread. `leave_out`: the
    candidate being judged, whose own pairs are not pooled."""
    if noise is None or noise.sd == 0:
        return noise
    num, dof = 0.0, 0
    for exp_id, runs in confirm.items():
        if exp_id == leave_out:
            continue
        diffs = []
        for seed, mine in runs.items():
            other = next((v for e, v in fresh.get(seed, {}).items() if e != exp_id), None)  # not its own
            if other is not None:
                diffs.append(mine - other)
        if len(diffs) >= 2:
            num, dof = num + _squares(diffs), dof + len(diffs) - 1
    if dof < PAIRED_DOF:
        return noise
    unshared = num / 2 / chi2_quantile(1 - SHARED_LEVEL, dof)  # a difference holds two runs' unshared noise
    return dataclasses.replace(noise, shared=max(noise.sd**2 - unshared, 0.0))


@functools.lru_cache(maxsize=4096)
def chi2_quantile(level: float, dof: int) -> float:
    from scipy import stats

    return float(stats.chi2.ppf(level, dof))


def looks(max_repeats: int) -> list[int]:
    """Numbers of runs at which the screening decides: 1, 2, 4, ... and max_repeats."""
    points, n = [], 1
    while n < max_repeats:
        points.append(n)
        n *= 2
    return [*points, max_repeats]


class Judge(Protocol):
    @property
    def replicate(self) -> int:
        """Fresh runs per arm before a keep lands (0: no replication stage)."""
        ...

    def decide(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
    ) -> Decision:
        """Screening: `candidate` holds its runs so far (None for a failed run)."""
        ...

    def confirm(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float | None],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        """Replication on fresh seeds, both arms on the same seeds, the pairs so far: keep, discard, or more
        (another pair first; never once `replicate` pairs are in). `among`: the runs of each code against which
        a spike in a pair is told (the pairs' runs among them): the candidate's valid runs, the champion's fresh
        ones."""
        ...

    def detectable(self, champion_runs: int, noise: Noise | None, deletes_code: bool = False) -> float | None:
        """The smallest improvement this judge keeps with 80% probability (None: noise unknown), for a candidate
        that deletes code or not. A judge that keeps some worse deletions answers for a deletion with a level at
        or below zero at which it keeps it most of the time (not exactly the smallest: its rule may differ)."""
        ...

    def with_repeats(self, most: int) -> Judge:
        """This judge with its own design for a candidate given up to `most` screening runs (`rsi retest
        --repeats`)."""
        ...

    def holds(
        self,
        fresh: Sequence[float],
        before: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        """After a keep landed: whether its fresh runs (`fresh`, none of which decided its keep) still show it
        no worse than the champion it replaced (that one's fresh runs, `before`). "discard": revert it. `among`:
        the runs of each code against which a spike is told (`fresh` and `before` among them): every valid run
        of the keep, and of its predecessor. "more": one more fresh run first, as these cannot tell."""
        ...


@dataclass(frozen=True)
class ThresholdJudge:
    """The first version, kept for comparison: one run, kept when it beats the champion's mean by min_delta."""

    min_delta: float = 0.0
    replicate: int = 0

    def decide(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
    ) -> Decision:
        if not candidate or any(m is None for m in candidate):
            return Decision("discard", "a run failed")
        if not champion:
            return Decision("keep", "no valid champion measurement to compare with")
        gain = improvement(statistics.fmean(m for m in candidate if m is not None), statistics.fmean(champion), goal)
        if gain > self.min_delta:
            return Decision("keep", f"better by {gain:.4g} (> min_delta {self.min_delta:g})")
        return Decision("discard", f"improvement {gain:.4g} is not above min_delta {self.min_delta:g}")

    def confirm(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float | None],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        return Decision("keep", "no replication stage")

    def detectable(self, champion_runs: int, noise: Noise | None, deletes_code: bool = False) -> float | None:
        return None

    def with_repeats(self, most: int) -> ThresholdJudge:
        return self  # one run decides, however many are allowed

    def holds(
        self,
        fresh: Sequence[float],
        before: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        return Decision("keep", "one run decides: nothing is re-measured")


@dataclass(frozen=True)
class SequentialJudge:
    confidence: float = 0.99
    max_repeats: int = 8
    min_delta: float = 0.0
    replicate: int = 4
    simplicity: bool = True
    futility: float = FUTILITY
    paired: bool = True  # replication's last look may be a paired test, where other candidates showed it pays
    champion_runs: int = 0  # the champion's runs before a candidate's second look (the futility rule's level)

    @property
    def alpha_stage(self) -> float:
        return math.sqrt(1 - self.confidence)

    def _quantile(self, level: float, dof: int) -> float:
        return t_quantile(level, max(dof, 1))

    def detectable(self, champion_runs: int, noise: Noise | None, deletes_code: bool = False) -> float | None:
        if noise is None or champion_runs < 1:
            return None
        se = noise.sd * math.sqrt(1 / self.max_repeats + 1 / champion_runs)
        if deletes_code and self.simplicity and self.max_repeats >= SIMPLER_RUNS:
            # kept when, with 80% confidence, at most one sd worse: at 80% on its last look from this level
            # (earlier looks keep too), and never asked to beat the champion, as it keeps most changes on par
            return min(-noise.sd + 2 * self._quantile(POWER, noise.dof) * se, 0.0)
        k = len(looks(self.max_repeats))
        q = self._quantile(1 - self.alpha_stage / k, noise.dof) + self._quantile(POWER, noise.dof)
        return self.min_delta + q * se

    def with_repeats(self, most: int) -> SequentialJudge:
        return dataclasses.replace(self, max_repeats=most)

    def holds(
        self,
        fresh: Sequence[float],
        before: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        """Reverted only when the fresh runs show it worse than the champion it replaced: its improvement's
        upper bound below zero. Not a second replication, which would revert true small gains about as often
        as replication misses them. Looked at again as its fresh runs grow in number: the look at n runs spends
        2 alpha / (n (n + 1)) of alpha = 1 - confidence, so that all of them together spend at most alpha,
        whichever counts are looked at."""
        # spikes that would count for a revert are left out: its own worse ones, its predecessor's better ones;
        # but worse runs that are most of its fresh runs, SHIFT_RUNS of them at least, are a shift, and count
        # (fewer: spikes or a shift, which one more fresh run tells)
        scale = noise.scale if noise is not None else None
        worse = spikes(fresh, scale, goal, among[0]).count(-1)
        if 2 * worse > len(fresh) and worse < SHIFT_RUNS:
            return Decision("more", f"{worse} of {len(fresh)} fresh runs far worse than its others: too few to tell")
        if not 2 * worse > len(fresh):
            fresh = unspiked(fresh, scale, goal, -1, among[0])
        before = unspiked(before, scale, goal, 1, among[1])
        n = len(fresh)
        if noise is None or noise.sd == 0 or n < 2 or not before:
            return Decision("keep", "too few fresh runs to tell")
        gain = improvement(statistics.fmean(fresh), statistics.fmean(before), goal)
        se = noise.sd * math.sqrt(1 / n + 1 / len(before))
        high = gain + self._quantile(1 - 2 * (1 - self.confidence) / (n * (n + 1)), noise.dof) * se
        if high < 0:
            return Decision("discard", f"worse on {n} fresh runs: {gain:.4g}, bound {high:.4g}", (gain, high))
        return Decision("keep", f"holds on {n} fresh runs: {gain:.4g}, bound {high:.4g}", (gain, high))

    def decide(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
    ) -> Decision:
        n = len(candidate)
        if n == 0 or any(m is None for m in candidate):
            return Decision("discard", "a run failed")
        if not champion:
            return Decision("discard", "the champion has no valid measurement to compare with")
        if noise is None or noise.sd == 0:
            return self._noiseless(candidate, champion, goal, noise)
        points = looks(self.max_repeats)
        # spikes that would count in its favour are left out: its own better ones, the champion's worse ones
        mine = unspiked([m for m in candidate if m is not None], noise.scale, goal, 1)
        theirs = unspiked(champion, noise.scale, goal, -1)
        gain = improvement(statistics.fmean(mine), statistics.fmean(theirs), goal)
        se = noise.sd * math.sqrt(1 / len(mine) + 1 / len(theirs))
        if n not in points:
            return Decision("more", f"{n} run(s); next look at {min(p for p in points if p > n)}")
        q_keep = self._quantile(1 - self.alpha_stage / len(points), noise.dof)
        low, high = gain - q_keep * se, gain + q_keep * se
        ci = (low, high)
        if low > self.min_delta:
            return Decision(
                "keep", f"improvement {gain:.4g}, bound [{low:.4g}, {high:.4g}] clears {self.min_delta:g}", ci
            )
        optimistic = gain + self._quantile(FIRST_LOOK if n == 1 else POWER, noise.dof) * se
        # hopeless against the champion as it will be measured by the next look, not as it is now (a short
        # top-up is completed for a candidate that gets a second look)
        detectable = self.detectable(max(len(champion), self.champion_runs), noise) or 0.0
        if deletes_code and self.simplicity:
            return self._simpler(gain, se, n, noise, ci)
        if optimistic < self.min_delta or optimistic < self.futility * detectable:
            return Decision(
                "discard", f"improvement {gain:.4g}; even the optimistic bound {optimistic:.4g} is too small", ci
            )
        if n >= self.max_repeats:
            return Decision("inconclusive", f"improvement {gain:.4g}, bound [{low:.4g}, {high:.4g}] after {n} runs", ci)
        return Decision("more", f"improvement {gain:.4g}, bound [{low:.4g}, {high:.4g}]: promising, run more", ci)

    def _pairs_better(self, n: int, level: float, noise: Noise) -> bool:
        """Whether replication's last look has the lower threshold as a paired t test on the candidate's own
        n pairs (n - 1 degrees of freedom, their spread expected from the seed's share other candidates showed)
        than unpaired on the pooled noise. The candidate's own pairs do not choose; its runs are in the pooled
        sd as in the unpaired test. A paired test with few degrees of freedom pays for estimating its spread:
        at this threshold it keeps the large gains a little less often and the smaller ones more often."""
        if not self.paired or n < 3 or noise.shared <= 0:
            return False
        unshared = max(noise.sd**2 - noise.shared, 0.0)
        return self._quantile(level, n - 1) * math.sqrt(unshared) < self._quantile(level, noise.dof) * noise.sd

    def _simpler(self, gain: float, se: float, n: int, noise: Noise, ci: tuple[float, float]) -> Decision:
        """The simplicity rule: less code that is, with 80% confidence, at most one noise sd worse."""
        q = self._quantile(POWER, noise.dof)
        if n >= SIMPLER_RUNS and gain - q * se > -noise.sd:
            return Decision("keep", f"deletes code and is within one noise sd of the champion ({gain:+.4g})", ci)
        if gain + q * se < -noise.sd:
            return Decision("discard", f"deletes code but is worse by {-gain:.4g}", ci)
        if n >= self.max_repeats:
            return Decision("inconclusive", f"deletes code; difference {gain:+.4g} after {n} runs", ci)
        return Decision("more", f"deletes code; difference {gain:+.4g} so far", ci)

    def _noiseless(
        self, candidate: Sequence[float | None], champion: Sequence[float], goal: Goal, noise: Noise | None
    ) -> Decision:
        """Repeats agreed exactly (a deterministic metric) or no noise estimate exists yet."""
        gain = improvement(statistics.fmean(m for m in candidate if m is not None), statistics.fmean(champion), goal)
        if noise is None and len(candidate) < 2:
            return Decision("more", "no noise estimate yet: repeating to measure it")
        if gain > self.min_delta:
            return Decision("keep", f"improvement {gain:.4g} with no run-to-run noise", (gain, gain))
        return Decision("discard", f"improvement {gain:.4g} with no run-to-run noise", (gain, gain))

    def confirm(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float | None],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        pairs = [(c, h) for c, h in zip(candidate, champion, strict=False) if c is not None and h is not None]
        if len(pairs) < len(candidate) or not pairs:
            return Decision("discard", "a replication run failed")
        n, final = len(pairs), len(pairs) >= self.replicate
        if not final and n > 1:  # looks after the first pair and after the last only
            return Decision("more", f"{n} of {self.replicate} fresh pairs")
        if noise is not None:  # the pairs with a spike in the candidate's favour are left out
            mine = spikes([c for c, _ in pairs], noise.scale, goal, among[0])
            theirs = spikes([h for _, h in pairs], noise.scale, goal, among[1])
            pairs = [p for p, a, b in zip(pairs, mine, theirs, strict=True) if a != 1 and b != -1]
            if not pairs:
                if final:
                    return Decision("discard", "every fresh pair held a spike in its favour")
                return Decision("more", f"1 of {self.replicate} fresh pairs, a spike in its favour left out")
            n = len(pairs)
        seeds = f"{n} fresh seed{'s' if n > 1 else ''}"
        gain = improvement(statistics.fmean(c for c, _ in pairs), statistics.fmean(h for _, h in pairs), goal)
        if noise is None or noise.sd == 0:
            if not final:
                return Decision("more", f"{n} of {self.replicate} fresh pairs, no noise estimate")
            ok = gain > self.min_delta
            return Decision("keep" if ok else "discard", f"replicated improvement {gain:.4g}", (gain, gain))
        se = noise.sd * math.sqrt(2 / n)
        if final and deletes_code and self.simplicity and gain - self._quantile(POWER, noise.dof) * se > -noise.sd:
            return Decision("keep", f"deletes code; on {seeds} within one noise sd ({gain:+.4g})")
        early = self.alpha_stage * EARLY_CONFIRM
        level = 1 - (self.alpha_stage - early if final else early)
        low = gain - self._quantile(level, noise.dof) * se
        if final and self._pairs_better(n, level, noise):  # a paired t test on its own pairs' spread
            diffs = [improvement(c, h, goal) for c, h in pairs]
            gain, seeds = statistics.fmean(diffs), f"{seeds}, paired"
            low = gain - self._quantile(level, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        if low > self.min_delta:
            return Decision("keep", f"replicated on {seeds}: {gain:.4g}, bound {low:.4g}", (low, gain))
        if not final:
            return Decision("more", f"1 of {self.replicate} fresh pairs: {gain:.4g}, bound {low:.4g}")
        return Decision("discard", f"did not replicate on {seeds}: {gain:.4g}, bound {low:.4g}")

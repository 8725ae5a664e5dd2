"""Samplers: where the knobs proposer's next values come from.

A sampler is asked for a point (some knobs held fixed at the champion's values) and told what became of it.
`OptunaSampler` drives an Optuna study (TPE, random). `CmaSampler` drives CMA-ES from the `cmaes` package
directly: the algorithm Optuna's CmaEsSampler runs (a generation is told once it has its population of
solutions), except that pruned and failed points are solutions too, ranked below every complete one (pruned
points among themselves by how far behind they were when stopped, failures last), and without a study whose
trials are copied and whose optimizer is unpickled on every ask, which was most of an in-process inner
experiment's cost.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import optuna

from rsi.judge import Goal

if TYPE_CHECKING:
    import cmaes

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate TPE

Dist = optuna.distributions.BaseDistribution
State = Literal["complete", "fail", "pruned", "skipped"]  # skipped: a point given back unrun (a duplicate)
_STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "fail": optuna.trial.TrialState.FAIL,
    "pruned": optuna.trial.TrialState.PRUNED,
    "skipped": optuna.trial.TrialState.PRUNED,
}


@dataclass
class Point:
    params: dict[str, Any]
    handle: Any = None  # the sampler's own record of the point (an Optuna trial, a CMA-ES generation)


class Sampler(Protocol):
    def ask(self, fixed: Mapping[str, Any]) -> Point:
        """Values for every knob, `fixed` ones as given."""
        ...

    def tell(self, point: Point, value: float | None, state: State) -> None:
        """The outcome of a point this sampler gave: a complete one's value; a pruned one's shortfall, how far
        behind the champion it was when stopped (`rsi.pruning.shortfall`; None when not known); else None."""
        ...

    def add(self, params: Mapping[str, Any], value: float | None, state: State) -> None:
        """The outcome of a point it did not give (the baseline, a resumed ledger), as for `tell`."""
        ...


def make_sampler(
    kind: str,
    dists: Mapping[str, Dist],
    goal: Goal,
    seed: int,
    startup: int,
    multivariate: bool,
    candidates: int,
    scouts: int = 0,
) -> Sampler:
    if kind == "cmaes":
        return CmaSampler(dists, goal, seed, scouts)
    if kind == "random":
        return OptunaSampler(dists, goal, optuna.samplers.RandomSampler(seed=seed))
    tpe = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=multivariate, n_ei_candidates=candidates
    )
    return OptunaSampler(dists, goal, tpe)


class OptunaSampler:
    def __init__(self, dists: Mapping[str, Dist], goal: Goal, sampler: optuna.samplers.BaseSampler) -> None:
        self.dists = dict(dists)
        self.study = optuna.create_study(direction=goal, sampler=sampler)

    def ask(self, fixed: Mapping[str, Any]) -> Point:
        self.study.enqueue_trial(dict(fixed), skip_if_exists=False)
        trial = self.study.ask(dict(self.dists))
        return Point(dict(trial.params), trial)

    def tell(self, point: Point, value: float | None, state: State) -> None:
        self.study.tell(point.handle, value if state == "complete" else None, state=_STATES[state])

    def add(self, params: Mapping[str, Any], value: float | None, state: State) -> None:
        try:
            trial = optuna.trial.create_trial(
                params=dict(params),
                distributions=self.dists,
                value=value if state == "complete" else None,
                state=_STATES[state],
            )
            self.study.add_trial(trial)
        except ValueError:
            return  # a value outside today's ranges (a hand-edited file): nothing to learn from


class CmaSampler:
    """CMA-ES over the numeric knobs, each mapped to [0, 1] (log knobs in log space, integers widened by half a
    step so the end values are as likely as the rest). The search proceeds with a step of a sixth of the box.
    Categorical knobs (a switch, a choice of activation) are searched with the numbers by CatCMA (`cmaes.CatCMA`:
    CMA-ES plus a distribution over each knob's choices, moved by the same ranking of outcomes, and never below a
    floor, so every choice stays possible), when there are two numeric knobs or more (what CatCMA needs); else
    they are drawn uniformly. Drawn uniformly for ever, as they were, a champion whose good numbers need the
    right switches saw most of its neighbours flip some switch, and most of a research's candidates were spent
    on settings already known to be bad. It starts at the middle of the box, and samples at random until one
    outcome is complete; or, with `scouts`, it first tries the middle of the box (in the knobs a candidate
    changes) and then random points, and after `scouts` outcomes (the baseline's included; a failed or pruned
    run counts, as the run it took) starts around the best complete one. A restart (a new sampler) scouts again.

    Why scouts: where the optimum lies depends on where the range came from. A range set by hand tends to be
    centred on where the optimum is thought to be, and the middle is a good start; a range rsi derives around
    the value in the file (a factor of ten either way) has that value as its middle, and the optimum is as
    likely near an edge (a learning rate ten times too small). Scouting keeps the middle as one candidate
    start and lets a better-placed one win (rsi.suite's placements)."""

    def __init__(self, dists: Mapping[str, Dist], goal: Goal, seed: int, scouts: int = 0) -> None:
        self.dists = dict(dists)
        self.sign = 1.0 if goal == "minimize" else -1.0
        self.rng = random.Random(seed)
        self.box: dict[str, tuple[float, float]] = {}
        for key, d in self.dists.items():
            if isinstance(d, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution):
                if d.low == d.high:
                    continue
                half = 0.5 if isinstance(d, optuna.distributions.IntDistribution) else 0.0
                lo, hi = d.low - half, d.high + half
                if d.log:
                    lo, hi = math.log(max(lo, d.low / 2)), math.log(hi)
                self.box[key] = (lo, hi)
        self.choices = {
            key: list(d.choices)
            for key, d in self.dists.items()
            if isinstance(d, optuna.distributions.CategoricalDistribution) and len(d.choices) > 1
        }
        self.joint = len(self.box) >= 2 and bool(self.choices)  # CatCMA searches the choices with the numbers
        self.row = {key: i for i, key in enumerate(self.choices)}  # each one's row in CatCMA's matrices
        self.scouts = scouts
        self.scouted = 0  # outcomes before CMA-ES starts
        self.best: tuple[float, np.ndarray] | None = None  # the best complete one: (signed value, unit point)
        self.best_choices: dict[str, Any] = {}  # and its categorical knobs' values
        self.worst: float | None = None  # the worst signed value of any complete outcome: where a pruned one ranks
        self.middle_asked = False
        self.cma: cmaes.CMA | cmaes.CatCMA | None = None
        if self.box and not scouts:
            self.cma = self._cma(np.full(len(self.box), 0.5))
        self.started = False  # an outcome was complete: CMA-ES proposes from then on
        # (solution as CMA-ES takes it, signed value or None when pruned or failed, how far behind: (0, shortfall)
        # or (1, 0))
        self.solutions: list[tuple[Any, float | None, tuple[float, float]]] = []

    def _cma(self, mean: np.ndarray) -> cmaes.CMA | cmaes.CatCMA:
        import cmaes  # (here: it imports scipy.stats, a second that commands proposing nothing skip)

        dim = len(self.box)
        if self.joint:
            return cmaes.CatCMA(
                mean=mean,
                sigma=1 / 6,
                cat_num=np.array([len(c) for c in self.choices.values()]),
                bounds=np.array([[0.0, 1.0]] * dim),
                seed=self.rng.randint(1, 2**31 - 2),
                n_max_resampling=10 * dim,
                cat_param=self._leaning(),
            )
        return cmaes.CMA(
            mean=mean,
            sigma=1 / 6,
            bounds=np.array([[0.0, 1.0]] * dim),
            seed=self.rng.randint(1, 2**31 - 2),
            n_max_resampling=10 * dim,
        )

    def _scout(self, params: Mapping[str, Any], value: float | None) -> None:
        """An outcome before CMA-ES starts (value None unless complete). Once there are `scouts`, CMA-ES starts
        around the best complete one, kept a little inside the box so that its first generation is not half
        outside it (the middle if none was complete)."""
        if value is not None:
            self._seen(value)
            try:
                unit = self._unit(params)
            except (KeyError, TypeError, ValueError):  # a resumed ledger's value that no longer fits its knob
                unit = None
            if unit is not None and (self.best is None or self.sign * value < self.best[0]):
                self.best = (self.sign * value, unit)
                self.best_choices = {key: params.get(key) for key in self.choices}
        self.scouted += 1
        if self.scouted >= self.scouts:
            self.cma = self._cma(
                np.full(len(self.box), 0.5) if self.best is None else np.clip(self.best[1], 0.05, 0.95)
            )
            self.started = True

    def ask(self, fixed: Mapping[str, Any]) -> Point:
        """A point of CMA-ES's current generation, unless every knob is fixed (a step near the champion, which
        CMA-ES did not draw and is not told of), no outcome is complete yet (a uniform draw), or CMA-ES has not
        started (a scout: the middle of the box first, then uniform draws)."""
        free = any(key not in fixed for key in (*self.box, *self.choices))
        x, c = None, None
        if self.cma is not None and self.started and free:
            from cmaes import CatCMA  # (already imported by _cma)

            x, c = self.cma.ask() if isinstance(self.cma, CatCMA) else (self.cma.ask(), None)
        units = dict(zip(self.box, x, strict=True)) if x is not None else {}
        if self.cma is None and not self.middle_asked and any(key not in fixed for key in self.box):
            self.middle_asked = True  # the first scout: the middle
            units = {key: self._middle(key) for key in self.box}
        params: dict[str, Any] = {}
        for key, d in self.dists.items():
            if key in fixed:
                params[key] = fixed[key]
            elif key in self.box:
                params[key] = self._value(key, float(units[key]) if key in units else self.rng.random())
            elif c is not None and key in self.choices:
                params[key] = self.choices[key][int(np.argmax(c[self.row[key]]))]
            else:
                params[key] = self._draw(d)
        return Point(params, self.cma.generation if x is not None and self.cma is not None else None)

    def tell(self, point: Point, value: float | None, state: State) -> None:
        """A complete outcome is a solution of its generation; so are a pruned one and a failed one, ranked below
        the worst complete outcome so far (CMA-ES only uses the ranks): pruned points by how far behind they were
        when stopped (their shortfall; an unknown one last), failures below them all. Were they left out, a
        research that prunes or crashes on most points would fill a generation only after many times its size,
        all drawn from one distribution, and CMA-ES would never learn to leave the region that crashes (a batch
        too large for the memory limit, a learning rate that ends in NaN); were pruned points tied, a generation
        of mostly pruned points would be ranked by chance, and CMA-ES would neither move towards the points
        nearest the champion's level nor narrow its steps."""
        if self.box and self.cma is None and state != "skipped":
            self._scout(point.params, value if state == "complete" else None)
            return
        signed: float | None = None  # a pruned or failed point's is set when its generation is told
        if state == "complete" and value is not None:
            self._seen(value)
            self.started, signed = True, self.sign * value
        elif state not in ("pruned", "fail"):
            return
        if self.cma is None or point.handle != self.cma.generation:
            return  # a random start, or an older generation's point finished after its generation was told
        # below every complete outcome, in this order: pruned by shortfall (unknown last), then failures
        behind = (0.0, math.inf if value is None else value) if state == "pruned" else (1.0, 0.0)
        solution = self._solution(point.params)
        if solution is None:
            return  # a fixed choice this research no longer offers: nothing CatCMA can be told
        self.solutions.append((solution, signed, behind))
        if len(self.solutions) >= self.cma.population_size:
            # with scouts, CMA-ES may start before any outcome was complete: the rest then rank from 0
            worst = 0.0 if self.worst is None else self.worst
            step = max(abs(worst), 1.0) * 1e-6
            order = sorted(
                (i for i, (_, v, _) in enumerate(self.solutions) if v is None), key=lambda i: self.solutions[i][2]
            )
            rank = {i: k + 1 for k, i in enumerate(order)}
            self.cma.tell(
                [(x, worst + step * rank[i] if v is None else v) for i, (x, v, _) in enumerate(self.solutions)]
            )
            self.solutions = []

    def add(self, params: Mapping[str, Any], value: float | None, state: State) -> None:
        if self.box and self.cma is None and state != "skipped":
            self._scout(params, value if state == "complete" else None)
        elif state == "complete" and value is not None:
            self._seen(value)
            self.started = True

    def _seen(self, value: float) -> None:
        signed = self.sign * value
        self.worst = signed if self.worst is None else max(self.worst, signed)

    def _middle(self, key: str) -> float:
        """The unit of the knob's middle value: the box's middle, except for a log integer knob, whose box is
        widened by half a step at each end, unevenly in log space: its middle is the geometric one of its
        range, so that a range derived around the file's value (a factor of four either way) has that value as
        its middle, as the other knobs' do."""
        d = self.dists[key]
        if not (isinstance(d, optuna.distributions.IntDistribution) and d.log):
            return 0.5
        lo, hi = self.box[key]
        return (0.5 * (math.log(d.low) + math.log(d.high)) - lo) / (hi - lo)

    def _value(self, key: str, u: float) -> Any:
        d = self.dists[key]
        assert isinstance(d, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution)
        lo, hi = self.box[key]
        y = lo + min(max(u, 0.0), 1.0) * (hi - lo)
        y = math.exp(y) if d.log else y
        if isinstance(d, optuna.distributions.IntDistribution):
            return int(min(max(round(y), d.low), d.high))
        return float(min(max(y, d.low), d.high))

    def _unit(self, params: Mapping[str, Any]) -> np.ndarray:
        units = []
        for key, (lo, hi) in self.box.items():
            v = float(params[key])
            v = math.log(max(v, 1e-300)) if self.dists[key].log else v  # type: ignore[attr-defined]
            units.append(min(max((v - lo) / (hi - lo), 0.0), 1.0))
        return np.array(units)

    def _solution(self, params: Mapping[str, Any]) -> Any:
        """A point as CMA-ES takes it: the unit point; for CatCMA, with a one-hot row per categorical knob."""
        x = self._unit(params)
        if not self.joint:
            return x
        onehot = self._categorical()
        for key, choices in self.choices.items():
            if params.get(key) not in choices:
                return None
            onehot[self.row[key], choices.index(params[key])] = 1.0
        return (x, onehot)

    def _leaning(self) -> np.ndarray:
        """CatCMA's first distribution over each categorical knob's choices: leaning to the best scout's choice
        (twice as likely as each other one) as the numbers start around its values; uniform without one."""
        q = self._categorical()
        for key, choices in self.choices.items():
            weights = [2.0 if self.best_choices.get(key) == choice else 1.0 for choice in choices]
            q[self.row[key], : len(choices)] = np.array(weights) / sum(weights)
        return q

    def _categorical(self) -> np.ndarray:
        """Zeros in the shape of CatCMA's categorical matrices: a row per knob, padded to the most choices."""
        return np.zeros((len(self.choices), max(len(c) for c in self.choices.values())))

    def _draw(self, d: Dist) -> Any:
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            return self.rng.choice(list(d.choices))
        assert isinstance(d, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution)
        return d.low  # a range of one value

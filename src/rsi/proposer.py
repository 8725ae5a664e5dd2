"""Proposers turn the ledger into candidates: file edits plus a one-line hypothesis.

`KnobsProposer` is the offline default: it searches the tunable literals of the editable files with a sampler's
ask-and-tell (`rsi.sampler`: CMA-ES, TPE or random), proposing against the current champion and telling the
sampler every outcome, failures included.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna

from rsi.config import KnobsConfig
from rsi.errors import UserError
from rsi.judge import Goal
from rsi.knobs import Knob, apply_values, as_written, describe, find_knobs, named_knobs
from rsi.ledger import SELECT_KINDS, Experiment, Ledger
from rsi.pruning import PRUNED, shortfall
from rsi.sampler import Point, Sampler, State, make_sampler


@dataclass(frozen=True)
class Proposal:
    edits: dict[str, str]  # repository-relative path -> new full text
    hypothesis: str
    params: dict[str, Any] = field(default_factory=dict)
    rejected: str = ""  # why the proposer itself could not make a candidate of it (a malformed edit)
    parent: int | None = None  # the experiment it builds on, when not the champion (a fix of a crash)
    by: str = ""  # the proposer that made it, when a swarm's member did (recorded as the experiment's proposer)


@dataclass(frozen=True)
class Context:
    champion: Experiment
    files: Mapping[str, str]  # the champion's editable files
    ledger: Ledger

    def history(self) -> list[Experiment]:
        """Finished experiments, oldest first, without their held-out runs: those never reach a proposer."""
        exps = self.ledger.experiments("state = 'done'")
        for e in exps:
            e.runs = [r for r in e.runs if r.kind in SELECT_KINDS]
        return exps


class Proposer(Protocol):
    name: str
    done_reason: str  # why propose() returned None, for the user ("" while it has more to propose)
    overlap: bool  # propose() may run in a thread while an experiment runs (it waits on a model, not the CPU)

    def propose(self, ctx: Context) -> Proposal | None:
        """A new candidate, or None when this proposer has nothing left to try."""
        ...

    def observe(self, exp: Experiment) -> None:
        """Learn from a finished experiment (called for every one, also when resuming)."""
        ...


def _distribution(k: Knob) -> optuna.distributions.BaseDistribution:
    if k.kind == "float":
        assert k.low is not None and k.high is not None
        return optuna.distributions.FloatDistribution(float(k.low), float(k.high), log=k.log)
    if k.kind == "int":
        assert k.low is not None and k.high is not None
        return optuna.distributions.IntDistribution(int(k.low), int(k.high), log=k.log)
    return optuna.distributions.CategoricalDistribution(list(k.choices))


class KnobsProposer:
    name = "knobs"
    done_reason = "every combination of the knobs was tried"
    overlap = False

    def __init__(self, start_files: Mapping[str, str], cfg: KnobsConfig, goal: Goal, seed: int = 0) -> None:
        self.knobs = named_knobs(start_files, cfg.include, cfg.exclude)
        self.cfg = cfg
        self.seed = seed
        self.dists = {key: _distribution(k) for key, k in self.knobs.items()}
        self.goal = goal
        self.sampler = self._sampler(seed)
        self.pending: dict[tuple[Any, ...], Point] = {}
        self.tried: set[tuple[Any, ...]] = set()
        self.dry = 0  # experiments observed since the last keep
        self.restarts = 0

    def _sampler(self, seed: int) -> Sampler:
        c = self.cfg
        return make_sampler(c.sampler, self.dists, self.goal, seed, c.startup, c.multivariate, c.candidates, c.scouts)

    def values(self, files: Mapping[str, str]) -> dict[str, Any]:
        """Current values of the knobs in the champion's files (they change as knobs are kept), each knob found
        in the file it was found in at the start; one its file no longer holds keeps its start value."""
        keys = {(k.file, k.name): key for key, k in self.knobs.items()}
        names = sorted({k.name for k in self.knobs.values()})
        found: dict[str, Any] = {}
        for path in sorted({k.file for k in self.knobs.values()} & files.keys()):
            for k in find_knobs(path, files[path], include=names):
                if (path, k.name) in keys:
                    found[keys[path, k.name]] = k.value
        return {key: found.get(key, k.value) for key, k in self.knobs.items()}

    def propose(self, ctx: Context) -> Proposal | None:
        if not self.knobs:
            return None
        current = self.values(ctx.files)
        clipped = {key: _clip(v, self.dists[key]) for key, v in current.items()}  # the champion, in the box
        if self.cfg.restart_after and self.dry >= self.cfg.restart_after:
            self._restart()
            # the new sampler forgets where it looked, not where the research stands: the champion is its first
            # outcome (with scouts, the start to beat)
            value = ctx.champion.mean()
            if value is not None:
                self.sampler.add(clipped, value, "complete")
        rng = random.Random(self.seed * 100_003 + len(self.tried) * 7 + self.restarts)
        for _ in range(20):
            chosen = set(rng.sample(sorted(self.knobs), min(self.cfg.per_candidate, len(self.knobs))))
            fixed = {key: clipped[key] for key in self.knobs if key not in chosen}
            if rng.random() < self.cfg.local:  # a step near the champion instead of the sampler's choice
                fixed.update(
                    {key: _near(current[key], self.dists[key], self.cfg.local_scale, rng) for key in sorted(chosen)}
                )
            point = self.sampler.ask(fixed)
            # What is measured is what the file says: the literal as written (3 significant digits).
            params = {key: as_written(v) for key, v in point.params.items()}
            changed = {key: v for key, v in params.items() if v != current[key]}
            signature = tuple(params[key] for key in self.knobs)
            if changed and signature not in self.tried:
                self.tried.add(signature)
                self.pending[signature] = point
                return self._proposal(ctx.files, current, params, changed)
            self.sampler.tell(point, None, "skipped")
        return None

    def _proposal(
        self,
        files: Mapping[str, str],
        current: dict[str, Any],
        params: dict[str, Any],
        changed: dict[str, Any],
    ) -> Proposal:
        by_file: dict[str, dict[str, Any]] = {}
        for key, value in changed.items():
            by_file.setdefault(self.knobs[key].file, {})[self.knobs[key].name] = value
        edits = {path: apply_values(files[path], values) for path, values in by_file.items()}
        hypothesis = describe({key: current[key] for key in changed}, changed)
        return Proposal(edits=edits, hypothesis=hypothesis, params=params)

    def _restart(self) -> None:
        """A fresh sampler that forgets where it has looked (not what it tried): exploration starts over."""
        self.restarts += 1
        self.dry = 0
        self.pending.clear()
        self.sampler = self._sampler(self.seed + 7919 * self.restarts)

    def observe(self, exp: Experiment) -> None:
        if not self.knobs:
            return
        if exp.id > 0:
            self.dry = 0 if exp.verdict == "keep" else self.dry + 1
        if exp.id == 0:
            params = {key: k.value for key, k in self.knobs.items()}
        elif exp.proposer == self.name and set(exp.params) == set(self.dists):
            params = dict(exp.params)
        else:
            return
        signature = tuple(params[key] for key in self.knobs)
        self.tried.add(signature)
        value = exp.mean() if exp.status == "ok" else None
        state: State = "complete" if value is not None else "fail"
        if exp.reason.startswith(PRUNED):  # clearly behind: ranked below every complete one, by how far behind
            value, state = shortfall(exp.reason), "pruned"
        point = self.pending.pop(signature, None)
        if point is not None:
            self.sampler.tell(point, value, state)
        else:
            self.sampler.add(params, value, state)


def _near(value: Any, dist: optuna.distributions.BaseDistribution, scale: float, rng: random.Random) -> Any:
    """A random step from `value`: Gaussian with sd `scale` of the range (in log space for log knobs); for a
    categorical knob, another choice with probability `scale`. (Always another, as it was, a step near a
    champion with three switches flipped all three: far from near.)"""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return rng.choice(others) if others and rng.random() < scale else value
    assert isinstance(dist, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution)
    value = _clip(value, dist)
    lo, hi, x = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, dist.low))
    y = min(max(rng.gauss(x, scale * (hi - lo)), lo), hi)
    y = math.exp(y) if dist.log else y
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(min(max(round(y), dist.low), dist.high))
    return float(min(max(y, dist.low), dist.high))


def _clip(value: Any, dist: optuna.distributions.BaseDistribution) -> Any:
    """Champion values lie inside the search ranges unless the file was edited by hand; clip those."""
    if isinstance(dist, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"knob value {value!r} does not fit its range")
        return type(value)(min(max(value, dist.low), dist.high))
    return value

"""Synthetic research tasks generated from a seed: noisy response surfaces over a few knobs, with a known optimum.

Each task is a small Python file of knobs (`params.py`, with `# rsi:` hints: log-scaled floats, integers, a
choice), a noisy objective that a research minimizes, the same objective without noise, and its optimum. They
have interactions, knobs that do nothing, and a region where the "training" crashes. Training and held-out
tasks come from different generators (families), not only different seeds, so a research program tuned on
one set is tested on surfaces of another shape.

Where the start and the optimum lie in the box (the placement) matters as much as the shape, because a sampler
starts somewhere. Two placements, as rsi meets knobs in real files:

- hinted: a range written by hand around where the optimum is thought to be; the optimum lies near the middle
  of the box (0.2 to 0.7) and the value in the file 0.2 to 0.4 of the box away from it;
- centred: no hint, so the range is the one rsi derives around the value in the file (a factor of 10 either
  way for a float): the value in the file is the middle of the box, and the optimum lies 0.15 to 0.45 of the
  box away from it, up to near an edge (a learning rate ten times too small).

The suites' "mixed" placement alternates them task by task; "hinted" alone was the only one until
2026-11-27, and programs researched on it learnt that the middle of the box is a good place to start.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence

FILE = "params.py"
Point = dict[str, float]  # knob name -> position in [0, 1] (log scale for log knobs)


@dataclasses.dataclass(frozen=True)
class KnobSpec:
    name: str
    kind: str  # "log" (float, log scale), "float", "int", "choice"
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()

    def position(self, value: object) -> float:
        """Where a value lies in [0, 1]."""
        if self.kind == "choice":
            return self.choices.index(str(value)) / max(1, len(self.choices) - 1) if value in self.choices else 0.0
        x = float(value)  # type: ignore[arg-type]
        if self.kind == "log":
            return (math.log(max(x, 1e-300)) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)

    def value(self, u: float) -> object:
        u = min(max(u, 0.0), 1.0)
        if self.kind == "choice":
            return self.choices[round(u * (len(self.choices) - 1))]
        if self.kind == "log":
            return float(f"{math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))):.3g}")
        if self.kind == "int":
            return round(self.low + u * (self.high - self.low))
        return float(f"{self.low + u * (self.high - self.low):.3g}")

    def line(self, value: object) -> str:
        if self.kind == "choice":
            hint = "choice(" + ", ".join(repr(c) for c in self.choices) + ")"
        else:
            low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
            hint = f"{'log-range' if self.kind == 'log' else 'range'}({low}, {high})"
        return f"{self.name} = {value!r}  # rsi: {hint}"


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    name: str
    family: str
    knobs: tuple[KnobSpec, ...]
    surface: Callable[[Point], float]  # noise-free objective of the positions; minimized; raises in crash regions
    start: Point
    optimum: float  # the surface's minimum over the box
    noise: float  # sd of the measurement noise
    live: tuple[str, ...] = ()  # the knobs that matter; the others do nothing
    heavy_tails: bool = False
    shared: float = 0.0  # the share of the noise's variance that a seed gives every code alike

    def files(self) -> dict[str, str]:
        lines = [f'"""Knobs of the synthetic task {self.name} ({self.family})."""']
        lines += [k.line(k.value(self.start[k.name])) for k in self.knobs]
        return {FILE: "\n".join(lines) + "\n"}

    def point(self, files: Mapping[str, str]) -> Point:
        values = _assignments(files[FILE])
        return {k.name: k.position(values.get(k.name, k.value(self.start[k.name]))) for k in self.knobs}

    def true(self, files: Mapping[str, str]) -> float:
        """The objective without noise (for a crash: the start's value, as a research would be left with)."""
        try:
            return self.surface(self.point(files))
        except ArithmeticError:
            return self.surface(self.point(self.files()))

    def measure(self, files: Mapping[str, str], seed: int, salt: int = 0) -> float:
        """One noisy run: what the research sees. A crash region raises, as a diverged training would. Part of
        the noise (`shared`, of its variance) comes with the seed whatever the code, as a seed's initial
        weights and data order would; the rest changes with the code too."""
        value = self.surface(self.point(files))
        same = self._draw(f"{self.name}:{seed}:{salt}")  # str seeds are stable across processes
        own = self._draw(f"{self.name}:{seed}:{salt}:{files[FILE]}")
        return value + self.noise * (math.sqrt(self.shared) * same + math.sqrt(1 - self.shared) * own)

    def _draw(self, key: str) -> float:
        rng = random.Random(key)
        if self.heavy_tails:  # Student's t with 3 degrees of freedom, scaled to unit sd
            return rng.gauss(0.0, 1.0) / math.sqrt(sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(3)) / 3) / math.sqrt(3)
        return rng.gauss(0.0, 1.0)

    def gap_closed(self, files: Mapping[str, str]) -> float:
        """How much of the way from the start to the optimum these files went: 1 at the optimum, 0 where it
        started, negative if worse (down to -1)."""
        start = self.surface(self.start)
        gap = start - self.optimum
        return max(-1.0, min(1.0, (start - self.true(files)) / gap)) if gap > 0 else 0.0


@functools.lru_cache(maxsize=1024)
def _assignments(text: str) -> dict[str, object]:
    """`NAME = literal` lines of a params file (fast: no tokenizer; cached, and never changed by a caller)."""
    found: dict[str, object] = {}
    for line in text.splitlines():
        name, eq, rest = line.partition("=")
        if not eq or not name.strip().isidentifier():
            continue
        try:
            found[name.strip()] = ast.literal_eval(rest.split("#", 1)[0].strip())
        except (ValueError, SyntaxError):
            continue
    return found


class Diverged(ArithmeticError):
    """The crash region: what a too-large learning rate does to a training."""


def _layout(rng: random.Random, n_live: int, n_dead: int) -> tuple[tuple[KnobSpec, ...], list[str]]:
    """Knobs of mixed kinds: the first live one is a log-scaled 'learning rate'; dead ones do nothing."""
    kinds = ["log", "int", "float", "log", "int", "float"]
    specs: list[KnobSpec] = []
    for i in range(n_live + n_dead):
        kind = kinds[i % len(kinds)] if i else "log"
        name = f"K{i}"
        if kind == "log":
            low = float(f"{10 ** rng.uniform(-5, -3):.2g}")
            specs.append(KnobSpec(name, "log", low, float(f"{low * 10 ** rng.uniform(2, 3):.2g}")))
        elif kind == "int":
            specs.append(KnobSpec(name, "int", 1, rng.choice([16, 32, 64])))
        else:
            specs.append(KnobSpec(name, "float", 0.0, 1.0))
    live = [s.name for s in specs[:n_live]]
    return tuple(specs), live


def _start_and_target(rng: random.Random, knobs: Sequence[KnobSpec], centred: bool) -> tuple[Point, Point]:
    """Where the research starts (the value written in the file) and where the optimum is, in the box."""
    if centred:  # a range rsi derived around the written value: the optimum anywhere off its middle
        target = {k.name: 0.5 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.45) for k in knobs}
        return {k.name: k.position(k.value(0.5)) for k in knobs}, target
    target = {k.name: rng.uniform(0.2, 0.7) for k in knobs}  # a hinted range around the optimum
    start = {}
    for k in knobs:  # start well away from the optimum, but not in the crash region
        t = target[k.name]
        u = min(0.85, max(0.02, t + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4)))
        start[k.name] = k.position(k.value(u))  # where the value written in the file lies
    return start, target


# switches' effect at a point, given the live knobs' optimum: how far each one's optimum moves, and a cost
Switched = Callable[[Point, Point], tuple[Point, float]]


def _crash_guard(lr: str, edge: float) -> Callable[[Point], None]:
    def guard(p: Point) -> None:
        if p[lr] > edge:
            raise Diverged(f"loss is nan: {lr} too large")

    return guard


def _finish(
    name: str,
    family: str,
    rng: random.Random,
    knobs: tuple[KnobSpec, ...],
    live: list[str],
    core: Callable[[Point], float],
    centred: bool,
    heavy: bool = False,
    switched: Switched | None = None,
) -> SyntheticTask:
    start, target = _start_and_target(rng, knobs, centred)
    shifted = {n: target[n] for n in live}
    # a crash region in every task, never over the start (which rounding the value in the file can lift past 0.85)
    guard = _crash_guard(live[0], min(max(0.85, shifted[live[0]] + 0.2, start[live[0]]), 0.99))

    def surface(p: Point) -> float:
        guard(p)
        moved, cost = switched(p, shifted) if switched else ({}, 0.0)
        return core({n: p[n] - shifted[n] - moved.get(n, 0.0) for n in live}) + cost

    base = surface(start)
    return SyntheticTask(
        name=name,
        family=family,
        knobs=knobs,
        surface=surface,
        start=start,
        optimum=0.0,
        noise=rng.uniform(0.01, 0.04) * base,
        live=tuple(live),
        heavy_tails=heavy,
        shared=rng.uniform(0.0, 0.8),
    )


# ---- training families
def bowl(seed: int, centred: bool = False) -> SyntheticTask:
    """An axis-aligned quadratic bowl with unequal curvatures."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, rng.randint(3, 4), rng.randint(1, 2))
    weights = {n: rng.uniform(0.3, 3.0) for n in live}

    def core(d: Point) -> float:
        return sum(weights[n] * d[n] ** 2 for n in d)

    return _finish(f"bowl-{seed}", "bowl", rng, knobs, live, core, centred)


def valley(seed: int, centred: bool = False) -> SyntheticTask:
    """A curved valley between two knobs (learning rate and batch size trade off), plus a bowl."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, rng.randint(3, 4), 1)
    a, b = live[0], live[1]
    weights = {n: rng.uniform(0.3, 2.0) for n in live}

    def core(d: Point) -> float:
        return (d[a] - d[b]) ** 2 * 8 + 0.5 * d[a] ** 2 + sum(weights[n] * d[n] ** 2 for n in live[2:])

    return _finish(f"valley-{seed}", "valley", rng, knobs, live, core, centred)


def steps(seed: int, centred: bool = False) -> SyntheticTask:
    """A bowl seen through coarse steps in its integer knobs, with an interaction between two of them."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, 4, 1)
    weights = {n: rng.uniform(0.5, 2.0) for n in live}

    def core(d: Point) -> float:
        return sum(weights[n] * d[n] ** 2 for n in live) + 2.0 * abs(d[live[1]] * d[live[2]])

    return _finish(f"steps-{seed}", "steps", rng, knobs, live, core, centred)


# ---- held-out families: other shapes
def ridge(seed: int, centred: bool = False) -> SyntheticTask:
    """A sharp, rotated ridge: progress only along a diagonal; heavy-tailed noise."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, 3, 2)
    a, b, c = live

    def core(d: Point) -> float:
        along, across = (d[a] + d[b]) / 2, (d[a] - d[b])
        return along**2 + 12 * across**2 + 0.7 * d[c] ** 2

    return _finish(f"ridge-{seed}", "ridge", rng, knobs, live, core, centred, heavy=True)


def kinked(seed: int, centred: bool = False) -> SyntheticTask:
    """Not smooth: absolute values, so the last stretch to the optimum is as steep as the first."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, rng.randint(3, 5), 1)
    weights = {n: rng.uniform(0.3, 1.5) for n in live}

    def core(d: Point) -> float:
        return sum(weights[n] * abs(d[n]) for n in d)

    return _finish(f"kinked-{seed}", "kinked", rng, knobs, live, core, centred)


def wells(seed: int, centred: bool = False) -> SyntheticTask:
    """A broad bowl with a narrower, deeper well at the optimum: local steps pay off near the end."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, 4, 1)

    def core(d: Point) -> float:
        r2 = sum(x * x for x in d.values())
        return 0.6 * r2 + 0.4 * (1 - math.exp(-r2 / 0.01))

    return _finish(f"wells-{seed}", "wells", rng, knobs, live, core, centred)


# ---- switches: categorical knobs, a family apart (neither suite above has any)
def switches(seed: int, centred: bool = False) -> SyntheticTask:
    """A bowl with switches: categorical knobs (an optimizer, a normalization, ...), each with one right choice
    and a fixed cost for any other, whatever the numbers. The first switch's right choice also moves the learning
    rate's best value towards the middle of its range, as changing the optimizer does: from a start with it
    wrong, both have to move together."""
    rng = random.Random(seed)
    knobs, live = _layout(rng, rng.randint(2, 3), 1)
    weights = {n: rng.uniform(0.3, 3.0) for n in live}
    flips = [KnobSpec(f"S{i}", "choice", choices=tuple("abcd"[: rng.randint(2, 4)])) for i in range(rng.randint(2, 3))]
    right = {k.name: rng.randrange(len(k.choices)) for k in flips}
    costs = {k.name: rng.uniform(0.1, 0.3) for k in flips}
    move = rng.uniform(0.1, 0.2)
    first, lr = flips[0].name, live[0]

    def chosen(k: KnobSpec, p: Point) -> bool:
        return round(p[k.name] * (len(k.choices) - 1)) == right[k.name]

    def switched(p: Point, optimum: Point) -> tuple[Point, float]:
        cost = sum(costs[k.name] for k in flips if not chosen(k, p))
        towards = move if optimum[lr] < 0.5 else -move
        return ({lr: towards} if chosen(flips[0], p) else {}), cost

    def core(d: Point) -> float:
        return sum(weights[n] * d[n] ** 2 for n in d)

    task = _finish(f"switches-{seed}", "switches", rng, (*knobs, *flips), live, core, centred, switched=switched)
    if chosen(flips[0], task.start):  # start with the first switch wrong: the research has to find it
        wrong = (right[first] + 1) % len(flips[0].choices)
        start = {**task.start, first: flips[0].position(flips[0].choices[wrong])}
        noise = task.noise / task.surface(task.start) * task.surface(start)  # the same share of a new start's value
        task = dataclasses.replace(task, start=start, noise=noise)
    return task


Family = Callable[[int, bool], SyntheticTask]  # (seed, centred) -> task
TRAIN: dict[str, Family] = {"bowl": bowl, "valley": valley, "steps": steps}
HELD_OUT: dict[str, Family] = {"ridge": ridge, "kinked": kinked, "wells": wells}
SWITCHES: dict[str, Family] = {"switches": switches}
SUITES = {"train": TRAIN, "heldout": HELD_OUT, "switches": SWITCHES}
PLACEMENTS = ("mixed", "hinted")


def suite(name: str, count: int, seed: int = 0, placement: str = "mixed") -> list[SyntheticTask]:
    """`count` tasks of a suite, its families in turn, each from its own seed; with the "mixed" placement
    every second task is centred (with three families, each family has both placements in six tasks)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}")
    families = list(SUITES[name].values())
    return [families[i % len(families)](seed * 1000 + i, placement == "mixed" and i % 2 == 1) for i in range(count)]

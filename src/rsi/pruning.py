"""Early stopping: a screening run clearly behind the champion's runs at the same step is stopped, `pruned`.

A task reports intermediate values as it goes: `rsi.progress(step, value)` prints the line
`rsi-progress <step> <value>`, which a script that cannot import rsi may print itself, or any line that
`[metric] progress_pattern` matches (first group the step, second the value). A step is any increasing
number: an iteration, an epoch, or the seconds spent when the training budget is time.

"Clearly behind" uses the noise the champion's own runs show at that step. A run is looked at `looks` times,
at steps evenly spaced from `warmup` (a fraction of the champion's trajectory) to its end; at each look its
value must lie beyond the interval that holds one more run of the champion with probability
1 - (1 - confidence) / looks (a prediction interval from the champion's runs there), moved towards the champion by
`lead` times their spread. `lead` is the smallest gain the judge detects, in noise sds (for a deletion the
judge may keep on par or a little worse, a level at or below zero): a first run far short of it is one the
judge discards soon after, so what pruning must spare is a run that may reach it. By the union bound, a run
that is in truth `lead` spreads better than the champion's (with `lead` 0: no worse) is stopped with
probability at most 1 - `confidence`, however many reports it prints; a run ahead of the champion's level is
never stopped. Too few champion runs reach a look's step: no verdict there, the run goes on.

The champion's level comes from its unbiased runs (the fresh ones, made after it was kept); the spread around
it is pooled with the spread of its other runs (from when it was a candidate) around their own mean: selection
moved their mean, hardly their spread, and with three fresh runs alone the interval would be twice as wide.
"""

from __future__ import annotations

import bisect
import math
import re
import statistics
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

PRUNED = "pruned"  # a run's status when it was stopped early; its experiment's status stays ok
LINE = re.compile(rb"^rsi-progress[ \t]+(\S+)[ \t]+(\S+)[ \t]*\r?$")
MAX_POINTS = 2000  # kept per run; past that every other point is dropped, so a chatty script costs little
MIN_RUNS = 3  # champion runs that must reach a step before anything is pruned there
MAX_LINE = 4096  # a longer "line" is not a progress report: not buffered whole

Point = tuple[float, float]


def progress(step: float, value: float) -> None:
    """Report an intermediate value to rsi (for early stopping): one line on stdout, flushed at once."""
    sys.stdout.write(f"rsi-progress {float(step)!r} {float(value)!r}\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Reference:
    """The champion's trajectories, and the rule a screening run is held to. Plain data: it travels to a Ray
    worker with the run."""

    curves: tuple[tuple[Point, ...], ...]  # one per champion run, sorted by step
    goal: str  # "minimize" or "maximize"
    confidence: float = 0.95
    warmup: float = 0.25
    looks: int = 4
    others: tuple[tuple[Point, ...], ...] = ()  # more of the champion's runs: for the spread only, not the level
    # the gain over the champion, in its spreads, that a run must be unlikely to reach; below zero for a
    # deletion the judge's simplicity rule may keep although worse
    lead: float = 0.0

    def steps(self) -> list[float]:
        """Where a run is looked at: `looks` steps evenly spaced from `warmup` of the way along the champion's
        runs to their (median) end."""
        every = self.curves + self.others
        first = min(c[0][0] for c in every)
        last = statistics.median(c[-1][0] for c in every)
        start = first + self.warmup * (last - first)
        return [start + i * (last - start) / self.looks for i in range(self.looks)]

    def behind(self, step: float, value: float) -> str:
        """Why `value` at `step` is clearly worse than the champion there, at one look, or ''."""
        here = [v for c in self.curves if (v := _at(c, step)) is not None]
        there = [v for c in self.others if (v := _at(c, step)) is not None]
        if len(here) < 2 or len(here) + len(there) < MIN_RUNS:
            return ""
        mean, n = statistics.fmean(here), len(here)
        squares, dof = sum((v - mean) ** 2 for v in here), n - 1
        if len(there) >= 2:  # pooled: each group around its own mean
            middle = statistics.fmean(there)
            squares, dof = squares + sum((v - middle) ** 2 for v in there), dof + len(there) - 1
        if dof < MIN_RUNS - 1:
            return ""
        sd = math.sqrt(squares / dof)
        bound = _t(1 - (1 - self.confidence) / self.looks, dof) * sd * math.sqrt(1 + 1 / n)
        worse, limit = value - mean if self.goal == "minimize" else mean - value, max(bound - self.lead * sd, 0.0)
        if worse <= limit or worse <= 1e-12 * max(1.0, abs(mean)):  # identical runs: only a real gap counts
            return ""
        champion = f"the champion's {mean:.5g} (by more than {limit:.3g}, {n + len(there)} runs)"
        return f"at step {step:g} its value {value:.5g} is behind {champion}"


BEHIND = re.compile(r"at step \S+ its value (\S+) is behind the champion's (\S+) ")


def shortfall(reason: str) -> float | None:
    """How far behind the champion a pruned run was where it was stopped, relative to the champion's level
    there (0.05: 5% worse), read from the reason `Reference.behind` wrote; None for another reason. A run
    stopped at a later look was closer to the champion's curve: its shortfall is smaller."""
    m = BEHIND.search(reason)
    if m is None:
        return None
    try:
        value, level = float(m.group(1)), float(m.group(2))
    except ValueError:
        return None
    gap = abs(value - level) / max(abs(level), 1e-12)
    return gap if math.isfinite(gap) else None


def reference(
    curves: Sequence[Sequence[Point]],
    goal: str,
    confidence: float,
    warmup: float,
    looks: int,
    others: Sequence[Sequence[Point]] = (),
    lead: float = 0.0,
) -> Reference | None:
    """A reference from the champion's recorded trajectories (`others`: runs for the spread only), or None when
    too few runs reported progress."""
    level = tuple(tuple(sorted(c)) for c in curves if len(c) >= 2)
    spread = tuple(tuple(sorted(c)) for c in others if len(c) >= 2)
    if len(level) < 2 or len(level) + (len(spread) if len(spread) >= 2 else 0) < MIN_RUNS:
        return None
    return Reference(level, goal, confidence, warmup, looks, spread, lead)


@dataclass
class Watch:
    """Reads a run's output as it streams: collects progress points and decides when to stop the run."""

    pattern: re.Pattern[bytes] | None = None
    against: Reference | None = None
    points: list[Point] = field(default_factory=list)
    reason: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    _partial: dict[int, bytes] = field(default_factory=dict)
    _looks: list[float] | None = None  # the steps still to look at, next first
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _every: int = 1  # keep one point in this many (doubles each time the list fills)
    _seen: int = 0

    def feed(self, chunk: bytes, stream: int) -> None:
        """A chunk of one stream (0 stdout, 1 stderr): complete lines are read, the rest waits for more."""
        data = self._partial.get(stream, b"") + chunk
        if self.pattern is None and b"rsi-progress" not in data:  # most output: no line to read
            self._partial[stream] = data[data.rfind(b"\n") + 1 :][-MAX_LINE:]
            return
        *lines, rest = data.split(b"\n")
        self._partial[stream] = rest if len(rest) <= MAX_LINE else b""
        for line in lines:
            if point := self._parse(line):
                self._add(point)

    def _parse(self, line: bytes) -> Point | None:
        m = LINE.match(line) or (self.pattern.search(line) if self.pattern is not None else None)
        if m is None or m.re.groups < 2:
            return None
        if m.group(1) is None or m.group(2) is None:  # an optional group that did not take part
            return None
        try:
            step, value = float(m.group(1)), float(m.group(2))
        except ValueError:
            return None
        return (step, value) if math.isfinite(step) and math.isfinite(value) else None

    def _add(self, point: Point) -> None:
        with self._lock:  # two reader threads, one per stream
            if self._seen % self._every == 0:  # the first point, then one in `_every`: evenly spaced
                self.points.append(point)
                if len(self.points) >= MAX_POINTS:
                    self.points[:] = self.points[::2]
                    self._every *= 2
            self._seen += 1
            if self.against is None or self.stop.is_set():
                return
            if self._looks is None:
                self._looks = self.against.steps()
            step, value = point
            if not self._looks or step < self._looks[0]:
                return
            while self._looks and self._looks[0] <= step:  # one look, however many look steps it passed
                self._looks.pop(0)
            if why := self.against.behind(step, value):
                self.reason = f"{PRUNED}: {why}"
                self.stop.set()


def _at(curve: Sequence[Point], step: float) -> float | None:
    """The curve's value at `step`, linearly between its reports; None outside the steps it reached."""
    if not curve or step < curve[0][0] or step > curve[-1][0]:
        return None
    i = bisect.bisect_left(curve, (step, -math.inf))
    x1, y1 = curve[i]
    if x1 == step or i == 0:
        return y1
    x0, y0 = curve[i - 1]
    return y0 + (y1 - y0) * (step - x0) / (x1 - x0)


@lru_cache(maxsize=256)
def _t(confidence: float, dof: int) -> float:
    """One-sided t quantile (scipy imported here: a task's script imports this module for `progress`)."""
    from scipy import stats

    return float(stats.t.ppf(confidence, dof))

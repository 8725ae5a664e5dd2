"""The judge decides keep / discard from measurements; it never sees a proposer or held-out numbers.

`Judge` is a small protocol so that the statistical judge (noise floor, sequential repeats) can replace the
first-version threshold rule without touching the loop: the loop asks, runs more seeds while the answer is
`more`, and records the verdict with its reason.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal, Protocol

Goal = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Decision:
    verdict: Literal["keep", "discard", "inconclusive", "more"]
    reason: str


def improvement(candidate: float, champion: float, goal: Goal) -> float:
    """How much better the candidate is (positive is better), whatever the goal."""
    return champion - candidate if goal == "minimize" else candidate - champion


def noise_sd(samples: list[list[float]]) -> float | None:
    """Pooled standard deviation of repeated runs of the same code (one list per experiment)."""
    num, dof = 0.0, 0
    for runs in samples:
        if len(runs) >= 2:
            num += statistics.variance(runs) * (len(runs) - 1)
            dof += len(runs) - 1
    return (num / dof) ** 0.5 if dof else None


class Judge(Protocol):
    def decide(self, candidate: list[float | None], champion: list[float], goal: Goal) -> Decision:
        """`candidate`: metrics of its runs so far (None for a failed run); `champion`: valid metrics."""
        ...


@dataclass(frozen=True)
class ThresholdJudge:
    """First version: one run, kept when its metric beats the champion's mean by more than `min_delta`."""

    min_delta: float = 0.0

    def decide(self, candidate: list[float | None], champion: list[float], goal: Goal) -> Decision:
        if not candidate or any(m is None for m in candidate):
            return Decision("discard", "a run failed")
        if not champion:
            return Decision("keep", "no valid champion measurement to compare with")
        cand = statistics.fmean(m for m in candidate if m is not None)
        best = statistics.fmean(champion)
        gain = improvement(cand, best, goal)
        if gain > self.min_delta:
            return Decision("keep", f"better by {gain:.4g} (> min_delta {self.min_delta:g})")
        return Decision("discard", f"{'worse' if gain < 0 else 'better'} by {abs(gain):.4g}, not > {self.min_delta:g}")

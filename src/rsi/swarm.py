"""A swarm: several proposers (the knobs proposer, one LLM researcher per model) feeding one research, with a
bandit choosing who proposes next.

The bandit is UCB1 on the keep rate, divided by what a proposal costs: one experiment, plus the dollars its
model call cost in units of `dollars_per_experiment` (what an experiment's compute is taken to be worth). A
member that was never tried goes first. Its statistics are not state of its own: they are read from the ledger
(each experiment records which member proposed it, each call what it cost), so they survive a resume and
`rsi status` shows the same figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rsi.ledger import Experiment, Ledger
from rsi.proposer import Context, Proposal, Proposer

DOLLARS_PER_EXPERIMENT = 0.10


def bandit_table(ledger: Ledger, members: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per proposer: proposals, keeps, keep rate, dollars, dollars per proposal, and its bandit index."""
    rows = ledger.db.execute(
        "SELECT proposer, COUNT(*), SUM(verdict = 'keep') FROM experiments WHERE id > 0 GROUP BY proposer"
    ).fetchall()
    counts = {str(r[0]): (int(r[1]), int(r[2] or 0)) for r in rows}
    spend = ledger.db.execute("SELECT proposer, SUM(cost_usd) FROM calls GROUP BY proposer").fetchall()
    dollars = {str(r[0]): float(r[1] or 0.0) for r in spend}
    names = list(members) if members is not None else sorted(counts)
    total = sum(counts.get(n, (0, 0))[0] for n in names)
    table: dict[str, dict[str, float]] = {}
    for name in names:
        n, keeps = counts.get(name, (0, 0))
        cost = dollars.get(name, 0.0) / n if n else 0.0
        rate = keeps / n if n else 0.0
        index = (
            math.inf
            if n == 0
            else (rate + math.sqrt(2 * math.log(max(total, 1)) / n)) / (1 + cost / DOLLARS_PER_EXPERIMENT)
        )
        table[name] = {
            "proposals": n,
            "keeps": keeps,
            "keep_rate": rate,
            "cost_usd": dollars.get(name, 0.0),
            "usd_per_proposal": cost,
            "index": index,
            "share": n / total if total else 0.0,
        }
    return table


class SwarmProposer:
    name = "swarm"
    overlap = True  # members are asked in the engine's look-ahead thread too, one call at a time

    def __init__(self, members: Sequence[Proposer], weights: Mapping[str, float] | None = None) -> None:
        """`weights` per kind of member ("knobs", "llm"; 1 when not given) scale each one's bandit index;
        a member of weight 0 is left out."""
        self.weights = {m.name: _weight(m.name, weights or {}) for m in members}
        self.members = {m.name: m for m in members if self.weights[m.name] > 0}
        self.done: dict[str, str] = {}  # member -> why it stopped
        self.done_reason = ""

    def propose(self, ctx: Context) -> Proposal | None:
        while True:
            live = [n for n in self.members if n not in self.done]
            if not live:
                self.done_reason = "every member stopped: " + "; ".join(f"{n}: {w}" for n, w in self.done.items())
                return None
            table = bandit_table(ctx.ledger, live)
            name = max(live, key=lambda n: (table[n]["index"] * self.weights[n], -live.index(n)))
            member = self.members[name]
            proposal = member.propose(ctx)
            if proposal is None:
                self.done[name] = member.done_reason or "nothing more to propose"
                continue
            return dataclasses.replace(proposal, by=name)

    def observe(self, exp: Experiment) -> None:
        member = self.members.get(exp.proposer)
        if member is not None:
            member.observe(exp)

    def state(self, ledger: Ledger) -> dict[str, Any]:
        return {"members": bandit_table(ledger, list(self.members)), "stopped": dict(self.done)}


def _weight(name: str, weights: Mapping[str, float]) -> float:
    kind = "llm" if name.startswith("llm") else name
    return float(weights.get(kind, 1.0))

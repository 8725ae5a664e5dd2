"""`rsi status`: the research's story from the ledger alone (the contract's JSON shape, or a table)."""

from __future__ import annotations

from typing import Any

from rsi.judge import noise_sd
from rsi.ledger import Experiment, Ledger


def experiment_status(e: Experiment) -> str:
    """`ok` when all its runs are ok, else the first failing run's status (contract)."""
    if e.status is not None:
        return e.status
    return next((r.status or "ok" for r in e.runs if r.kind == "select" and r.status != "ok"), "ok")


def experiment_json(e: Experiment) -> dict[str, Any]:
    select = [r for r in e.runs if r.kind == "select"]
    durations = [r.duration_s for r in e.runs if r.duration_s is not None]
    memory = [r.peak_memory_mb for r in e.runs if r.peak_memory_mb is not None]
    return {
        "id": e.id,
        "status": experiment_status(e),
        "verdict": "baseline" if e.id == 0 else (e.verdict or "pending"),
        "metric": e.mean(),
        "runs": e.metrics(),
        "seeds": [r.seed for r in select],
        "holdout": e.mean("holdout"),
        "proposer": e.proposer,
        "hypothesis": e.hypothesis,
        "commit": e.kept_commit or e.commit_sha,
        "parent": e.parent,
        "reason": e.reason,
        "reverted": False,
        "peak_memory_mb": max(memory) if memory else None,
        "duration_s": round(sum(durations), 3) if durations else None,
    }


def status_json(ledger: Ledger) -> dict[str, Any]:
    exps = ledger.experiments()
    base = exps[0] if exps else None
    kept = [e for e in exps if e.verdict == "keep"]
    best = kept[-1] if kept else base
    return {
        "task": ledger.get("task"),
        "goal": ledger.get("goal"),
        "metric": ledger.get("metric"),
        "tag": ledger.get("tag"),
        "baseline": {
            "metric": base.mean() if base else None,
            "runs": base.metrics() if base else [],
            "holdout": base.mean("holdout") if base else None,
        },
        "best": {
            "metric": best.mean() if best else None,
            "commit": (best.kept_commit or best.commit_sha) if best else None,
            "holdout": best.mean("holdout") if best else None,
            "id": best.id if best else None,
        },
        "noise_sd": noise_sd([e.valid() for e in exps if e.state == "done"]),
        "experiments": [experiment_json(e) for e in exps],
    }

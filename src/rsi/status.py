"""`rsi status`: the research's story from the ledger alone (the contract's JSON shape, or a table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rsi.config import ConstraintConfig
from rsi.experiment import champion_pool, constraint_value, contended
from rsi.judge import Goal, NoisePool, improvement, with_seed_share
from rsi.ledger import SELECT_KINDS, Experiment, Ledger
from rsi.pruning import PRUNED
from rsi.swarm import bandit_table


def experiment_status(e: Experiment) -> str:
    """`ok` when all its runs are ok, else the first failing run's status (contract)."""
    if e.status is not None:
        return e.status
    failed = (r.status for r in e.runs if r.kind in SELECT_KINDS and r.status not in ("ok", PRUNED))
    return next(failed, "ok") or "ok"


def holdout_flag(e: Experiment, parent: Experiment | None, base: Experiment | None, goal: Goal) -> str | None:
    """Where held-out data disagrees with selection. Shown, never acted on: acting would make it selection data."""
    mine = e.mean("holdout")
    if e.verdict != "keep" or mine is None:
        return None
    for who, other in (("the baseline's", base), ("its parent's", parent)):
        theirs = other.mean("holdout") if other is not None else None
        if theirs is not None and improvement(mine, theirs, goal) < 0:
            return f"kept on selection, but its held-out result is worse than {who}"
    return None


def believed(best: Experiment, base: Experiment) -> float | None:
    """The champion's selection figure rsi stands by: the mean of its fresh runs, taken after its keep was decided
    (the runs that decided it are biased upward: it was kept because they were good). A champion without fresh
    runs yet, or under a judge without replication, has only its deciding runs; the baseline's runs decided
    nothing."""
    if best.id == base.id:
        return base.mean()
    pool = [r.metric for r in champion_pool(best) if r.metric is not None]
    return sum(pool) / len(pool) if pool else None


def experiment_json(e: Experiment, flag: str | None = None) -> dict[str, Any]:
    select = [r for r in e.runs if r.kind in SELECT_KINDS]
    durations = [r.duration_s for r in e.runs if r.duration_s is not None]
    memory = [r.peak_memory_mb for r in e.runs if r.peak_memory_mb is not None]
    return {
        "id": e.id,
        "status": experiment_status(e),
        "verdict": ("baseline" if e.state == "done" else "pending") if e.id == 0 else (e.verdict or "pending"),
        "metric": e.mean(),
        "runs": e.metrics(),
        "seeds": [r.seed for r in select],
        "holdout": e.mean("holdout"),
        "proposer": e.proposer,
        "hypothesis": e.hypothesis,
        "commit": e.kept_commit or e.commit_sha,
        "parent": e.parent,
        "reason": e.reason,
        "reverted": e.reverted,
        "revert_commit": e.revert_commit,
        "ci": list(e.ci) if e.ci else None,
        "holdout_flag": flag,
        "peak_memory_mb": max(memory) if memory else None,
        "duration_s": round(sum(durations), 3) if durations else None,
        "contended_runs": sum(contended(r) for r in e.runs),  # runs whose cores others kept busy (runner.BUSY)
    }


def _gain(a: float | None, b: float | None, goal: Goal) -> float | None:
    return None if a is None or b is None else improvement(a, b, goal)


def status_json(ledger: Ledger) -> dict[str, Any]:
    exps = ledger.experiments()
    by_id = {e.id: e for e in exps}
    base = exps[0] if exps else None
    kept = [e for e in exps if e.verdict == "keep"]
    best = kept[-1] if kept else base
    believed_best = believed(best, base) if best and base else None
    goal: Goal = "maximize" if ledger.get("goal") == "maximize" else "minimize"
    pool = NoisePool(anchor=0)
    noise = with_seed_share(pool(ledger.select_metrics()), *ledger.replication_pairs())
    detectable = ledger.get("detectable")
    rows = [experiment_json(e, holdout_flag(e, by_id.get(e.parent or 0), base, goal)) for e in exps]
    return {
        "task": ledger.get("task"),
        "goal": ledger.get("goal"),
        "metric": ledger.get("metric"),
        "tag": ledger.get("tag"),
        "paused": ledger.get("paused") == "1",  # by `rsi pause`: no new experiment starts until `rsi resume`
        # `rsi retest`s a research takes before its next proposal: {"id": experiment, "repeats": K}
        "retests_waiting": ledger.get_json("retests") or [],
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
            "fresh_metric": believed_best,  # what the selection gain uses (see `believed`)
        },
        "noise_sd": noise.sd if noise else None,
        "noise_dof": noise.dof if noise else 0,
        # the share of the noise's variance a seed gives every commit alike, as replication pairs show it
        "noise_seed_share": noise.shared / noise.sd**2 if noise and noise.sd > 0 else 0.0,
        # experiments whose runs spread too much to share the noise of the others (code unstable on some seeds)
        "noise_left_out": pool.left_out,
        # runs far from the other runs of their code, left out of the noise (judge.spikes)
        "noise_spikes": pool.spikes,
        "detectable": float(detectable) if detectable else None,
        "selection_gain": _gain(believed_best, base.mean(), goal) if best and base else None,
        "holdout_gain": _gain(best.mean("holdout"), base.mean("holdout"), goal) if best and base else None,
        "holdout_flags": sum(1 for r in rows if r["holdout_flag"]),
        "contended_runs": sum(r["contended_runs"] for r in rows),
        "models": ledger.calls_by_model(),  # per model: calls, tokens_in, tokens_out, cost_usd, failed, unanswered
        "proposers": _proposers(ledger),  # per proposer: proposals, keeps, cost, bandit index and share
        "pareto": pareto(exps, ledger.get_json("constraints") or [], goal),
        "experiments": rows,
    }


def _dominates(a: dict[str, Any], b: dict[str, Any], goal: Goal, sign: float) -> bool:
    gain = improvement(a["metric"], b["metric"], goal)
    cost = sign * (b["value"] - a["value"])
    return gain >= 0 and cost >= 0 and (gain > 0 or cost > 0)


def pareto(exps: list[Experiment], constraints: list[dict[str, Any]], goal: Goal) -> list[dict[str, Any]]:
    """Per constraint: every measured experiment's metric and figure, and the ids on the Pareto front (no other
    is at least as good on both and better on one). The figure is better low for a `max` bound, else high."""
    fronts: list[dict[str, Any]] = []
    for raw in constraints:
        c = ConstraintConfig.model_validate(raw)
        points = []
        for e in exps:
            metric, value = e.mean(), constraint_value(e, c)
            if metric is not None and value is not None and experiment_status(e) == "ok":
                points.append({"id": e.id, "metric": metric, "value": value, "verdict": e.verdict})
        sign = 1.0 if c.max is not None else -1.0  # lower is better under a max bound
        front = [p["id"] for p in points if not any(_dominates(q, p, goal, sign) for q in points)]
        fronts.append({"name": c.name, "max": c.max, "min": c.min, "points": points, "front": front})
    return fronts


def _proposers(ledger: Ledger) -> dict[str, dict[str, float | None]]:
    """The bandit's view of each proposer; an untried member's infinite index is shown as null (JSON)."""
    table = bandit_table(ledger)
    return {n: {k: (None if v == float("inf") else v) for k, v in row.items()} for n, row in table.items()}


def standing(data: Mapping[str, Any]) -> str:
    """`rsi status`'s line under its table, from `status_json`: baseline, best, noise."""
    noise, best = data["noise_sd"], data["best"]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.6g}"

    # the fresh figure differs only where the champion has fresh runs apart from those that decided its keep
    fresh = f"; {num(best['fresh_metric'])} on its fresh runs" if best["fresh_metric"] != best["metric"] else ""
    share = f", {data['noise_seed_share']:.0%} of it the seed's" if data["noise_seed_share"] else ""
    out = data.get("noise_left_out") or []
    unstable = f" (without {', '.join(f'#{i}' for i in out)}: runs too spread to share it)" if out else ""
    spiked = data.get("noise_spikes") or 0
    unstable += f" (without {spiked} spike run(s), far from the other runs of their code)" if spiked else ""
    busy = data.get("contended_runs") or 0
    paused = "  PAUSED (rsi resume lets it go on)" if data.get("paused") else ""
    load = f"  {busy} run(s) on a busy machine (other processes used half their cores or more)" if busy else ""
    return (
        f"baseline {num(data['baseline']['metric'])}  best {num(best['metric'])} (experiment {best['id']}{fresh})  "
        f"noise sd {'-' if noise is None else f'{noise:.3g}'}{share}{unstable}{load}{paused}"
    )

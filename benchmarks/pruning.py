"""Early stopping at equal wall clock: rsi on examples/tinygpt with `[pruning]` off, then on, in pairs.

Each arm researches its own fresh copy of tinygpt for the same wall-clock budget, with the default judge and a
seeded knobs proposer whose seed the two arms of a pair share, one arm at a time so that they never compete
for the CPU. Each pair has its own seed and the order of its arms alternates from pair to pair.

Why pairs: one arm is one research, and what it happens to meet decides its count of candidates more than
pruning does. A keep costs about a dozen full runs (more screening runs, replication, top-ups, the held-out
run), none of which pruning stops; tinygpt's budget is wall clock, so the same seed does not give the same run
twice, and an arm that keeps a candidate its twin discarded (or the reverse) parts from it for good. The
figure is the candidates of all arms with pruning against all arms without, with each pair's ratio beside it.

The proposer samples at random (the program's sampler, `--sampler`, otherwise): a random sampler does not
learn from results, so until one arm keeps something the other does not, both are offered the same candidates
in the same order, and the difference in candidates evaluated is pruning's alone. With an adaptive sampler
the two arms drift apart after the first pruned trial (a sampler learns differently from a pruned trial than
from a complete one), and one arm's luck decides the figure: in a run with CMA-ES, the arm with pruning met
three near-misses whose extra runs took 600 s of its 900, and evaluated fewer candidates than the arm without.

Both arms start warm: Optuna first tunes tinygpt's knobs directly (`--warm-minutes`, one run per trial, as
benchmarks/research.py runs it; not counted), and both arms continue from its best trial. That is the state
most of a night is spent in: the easy gains are taken, keeps are rare, and most candidates lose. From a cold
start the first minutes go to keeps (each buys replication, top-up and holdout runs, which are never stopped
early), so a short cold benchmark measures the keeps, not the screening that pruning speeds up.

tinygpt reports its smoothed training loss against the seconds spent (`rsi-progress` lines); with pruning on,
a first screening run clearly behind the champion's runs at the same second is stopped.

Figures per arm: candidates evaluated (experiments that got a verdict from runs, baseline and rejected
proposals aside), the held-out gain of its final champion (re-measured outside the budgets on fixed seeds,
as benchmarks/research.py does), the runs pruned and the run time they took against what full runs take.

Wrongly pruned: a sample of the pruned candidates is run to the end, outside the budgets, on the seed of the
run that was stopped, and then judged about as the research would have judged it: against the runs of the
champion it was compared with and the noise estimate, both as they stood when the run was stopped, with more
runs on the champion's next seeds for as long as the judge asks for them. A pruned candidate counts as
wrong when the judge keeps it. That keep is before replication, which would reject some of them, so the rate
is an upper bound on the keeps pruning cost. Beside it the table gives a looser figure still: how many of
those full runs beat the champion's mean on their own.

Targets: pruning evaluates at least 1.5x the candidates, its held-out gain is not worse, and under 5% of the
pruned candidates are wrong.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from research import (
    Code,
    Holdout,
    OutOfTime,
    Task,
    gain,
    hard_stop,
    kill_leftovers,
    log,
    optuna_search,
    prepare,
    select_run,
)

from rsi.engine import Limits, Research, default_judge
from rsi.experiment import champion_pool, deletes_code, screen_seed
from rsi.judge import Noise, NoisePool, improvement
from rsi.ledger import Experiment, Ledger, Run
from rsi.proposer import KnobsProposer, Proposer
from rsi.workspace import Workspace

TARGET = "pruning: >= 1.5x candidates, held-out gain not worse, wrongly pruned < 5%"


def arm(task: Task, budget: float, pruning: bool, seed: int, sampler: str | None) -> dict[str, Any]:
    """One research of `budget` seconds; its figures and its final champion's files."""
    cfg = task.cfg.model_copy(update={"pruning": task.cfg.pruning.model_copy(update={"enabled": pruning})})
    knobs = cfg.knobs if sampler is None else cfg.knobs.model_copy(update={"sampler": sampler})

    def factory(code: Code, start: str) -> Proposer:
        files = {p: code.read(start, p) for p in code.files(start, cfg.task.editable)}
        return KnobsProposer(files, knobs, cfg.metric.goal, seed=seed)

    engine: Research | None = None
    started = time.monotonic()
    try:
        with hard_stop(budget):
            engine = Research(task.root, cfg, factory)
            engine.run(Limits(time_budget_s=budget))
    except OutOfTime:
        pass
    finally:
        if engine is not None:
            engine.ledger.close()
        kill_leftovers()
    wall = time.monotonic() - started
    ledger = Ledger(Workspace(task.root).state / "ledger.sqlite", readonly=True)
    try:
        exps = ledger.experiments("state = 'done'")
    finally:
        ledger.close()
    by_id = {e.id: e for e in exps}
    candidates = [e for e in exps if e.id > 0 and e.status != "rejected"]
    pruned = [e for e in candidates if e.reason.startswith("pruned:")]
    full = [r.duration_s for e in exps for r in e.runs if r.status == "ok" and r.kind != "holdout" and r.duration_s]
    cut = [r.duration_s for e in pruned for r in e.runs if r.status == "pruned" and r.duration_s]
    best = max((e for e in exps if e.verdict == "keep"), key=lambda e: e.id, default=by_id.get(0))
    ws = Workspace(task.root)
    commit = (best.kept_commit or best.commit_sha) if best else None
    commit = commit or ws.head()
    return {
        "wall_s": round(wall, 1),
        "experiments": len(exps),
        "candidates": len(candidates),
        "kept": sum(1 for e in candidates if e.verdict == "keep"),
        "pruned": len(pruned),
        "full_run_s": round(statistics.fmean(full), 2) if full else None,
        "pruned_run_s": round(statistics.fmean(cut), 2) if cut else None,
        "_pick": {p: ws.read(commit, p) for p in ws.files(commit, cfg.task.editable)},
        "_pruned": [(e, [r for r in e.runs if r.status == "pruned"][-1], by_id[e.parent or 0]) for e in pruned],
        "_root": task.root,
    }


def warm_start(tasks: dict[tuple[str, int], Task], files: dict[str, str]) -> dict[tuple[str, int], Task]:
    """Each arm's copy, moved on to the warm tuning's best trial by one commit."""
    moved = {}
    for name, task in tasks.items():
        for path, text in files.items():
            (task.root / path).write_text(text)
        git = ["git", "-c", "user.name=rsi-bench", "-c", "user.email=bench@localhost"]
        message = "warm start: the best trial of a first tuning"
        subprocess.run([*git, "commit", "-qam", message, "--allow-empty"], cwd=task.root, check=True)
        moved[name] = Task(task.example, task.root, task.cfg, {**task.files, **files})
    return moved


def noise_before(ledger_path: Path, run_id: int) -> Noise | None:
    """The noise estimate as the research had it when run `run_id` started: from the runs recorded before it."""
    ledger = Ledger(ledger_path, readonly=True)
    try:
        rows = ledger.db.execute(
            "SELECT experiment, metric FROM runs WHERE state = 'done' AND status = 'ok' AND metric IS NOT NULL"
            " AND kind IN ('screen', 'confirm', 'fresh') AND id < ? ORDER BY id",
            (run_id,),
        ).fetchall()
    finally:
        ledger.close()
    metrics: dict[int, list[float]] = {}
    for exp_id, metric in rows:
        metrics.setdefault(int(exp_id), []).append(float(metric))
    return NoisePool(anchor=0)(metrics)  # as the research pools it: the baseline is never left out


def wrongly_pruned(task: Task, ws_root: Path, sample: list[tuple[Experiment, Run, Experiment]]) -> tuple[int, int, int]:
    """Runs each sampled pruned candidate to the end on the seed it was stopped on, then on as long as the judge
    asks, against the champion's runs and the noise estimate as they stood when the run was stopped: (kept by
    the judge, full runs that beat the champion's mean, candidates checked)."""
    ws, judge, goal = Workspace(ws_root), default_judge(task.cfg), task.cfg.metric.goal
    kept = beat = checked = 0
    for exp, stopped, champion in sample:
        pool = [r for r in champion_pool(champion) if r.id < stopped.id]
        if exp.commit_sha is None or not pool:
            continue
        noise = noise_before(ws.state / "ledger.sqlite", stopped.id)
        files = {p: ws.read(exp.commit_sha, p) for p in ws.files(exp.commit_sha, task.cfg.task.editable)}
        for path, text in files.items():
            (task.root / path).write_text(text)
        level = [r.metric for r in pool if r.metric is not None]
        mean = statistics.fmean(level)
        values = [select_run(task, stopped.seed)]  # the stopped run's seed: the champion's first, as in the research
        checked += 1
        first = values[0]
        if first is not None and improvement(first, mean, goal) > 0:
            beat += 1
        deletes = deletes_code(exp.diff)
        decision = judge.decide(values, level, goal, noise, deletes)
        while decision.verdict == "more" and len(values) < task.cfg.judge.max_repeats:
            values.append(select_run(task, screen_seed(pool[len(values) :], exp.id, len(values))))
            decision = judge.decide(values, level, goal, noise, deletes)
        shown = ", ".join("failed" if v is None else f"{v:.4f}" for v in values)
        log(f"  #{exp.id} {exp.hypothesis}: {shown} against {mean:.4f}: {decision.verdict}")
        kept += decision.verdict == "keep"
    return kept, beat, checked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="a smoke test: 45 s per arm, 1 s training, 2 pruned candidates re-run"
    )
    ap.add_argument("--minutes", type=float, help="wall clock per arm (default 10)")
    ap.add_argument("--pairs", type=int, help="pairs of arms, each with its own proposer seed (default 3; --quick 1)")
    ap.add_argument("--warm-minutes", type=float, help="Optuna's tuning all arms start from (default 12; --quick 0)")
    ap.add_argument("--train-budget", help="tinygpt's training budget per run (default 15s; --quick 1s)")
    ap.add_argument("--sample", type=int, help="pruned candidates run to the end (default 20; --quick 2)")
    ap.add_argument("--holdout-seeds", type=int, help="held-out re-measurements per pick (default 3; --quick 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the knobs proposer in the first pair")
    ap.add_argument(
        "--sampler",
        default="random",
        choices=["random", "tpe", "cmaes", "program"],
        help="the knobs proposer's sampler in all arms (default random; program: the program's)",
    )
    ap.add_argument("--dir", type=Path, help="keep the copies here (default: a temporary folder, removed)")
    args = ap.parse_args()
    budget = 60 * (args.minutes or (0.75 if args.quick else 10.0))
    pairs = args.pairs or (1 if args.quick else 3)
    train = args.train_budget or ("1s" if args.quick else "15s")
    sample_size = args.sample if args.sample is not None else (2 if args.quick else 20)
    seeds = args.holdout_seeds or (1 if args.quick else 3)
    sampler = None if args.sampler == "program" else args.sampler
    work = args.dir or Path(tempfile.mkdtemp(prefix="rsi-bench-pruning-"))
    arms: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        names = [(name, i) for i in range(pairs) for name in ("off", "on")]
        tasks = {key: prepare("tinygpt", work / f"{key[0]}{key[1]}", train) for key in names}
        warm = 60 * (args.warm_minutes if args.warm_minutes is not None else (0.0 if args.quick else 12.0))
        if warm > 0:
            log(f"tinygpt, warm start: {warm:.0f} s of Optuna ...")
            first = optuna_search(prepare("tinygpt", work / "warm", train), warm, args.seed + 1000)
            log(f"  {first.runs} trials, best {first.best}: all arms start from it")
            tasks = warm_start(tasks, first.pick)
        for i in range(pairs):  # the order alternates, so that a machine growing busier favours neither arm
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                log(f"tinygpt, pair {i + 1} (seed {args.seed + i}), pruning {name}: {budget:.0f} s ...")
                arms[name, i] = arm(tasks[name, i], budget, name == "on", args.seed + i, sampler)
                log(f"  {arms[name, i]['candidates']} candidates, {arms[name, i]['pruned']} pruned")
        log(f"held-out re-measurement ({seeds} seed(s) per pick) ...")
        holdout = Holdout(prepare("tinygpt", work / "holdout", train), seeds)
        base = holdout.measure(tasks["off", 0].files)
        goal = tasks["off", 0].cfg.metric.goal
        for figures in arms.values():
            figures["holdout_gain"] = gain(holdout.measure(figures["_pick"]), base, goal)
        pruned = [(i, item) for i in range(pairs) for item in arms["on", i]["_pruned"]]
        sample = random.Random(args.seed).sample(pruned, min(sample_size, len(pruned)))
        log(f"running {len(sample)} of {len(pruned)} pruned candidates to the end ...")
        wrong = beat = checked = 0
        for i in range(pairs):
            on = arms["on", i]
            mine = [item for j, item in sample if j == i]
            w, b, c = wrongly_pruned(holdout.task, on["_root"], mine)
            wrong, beat, checked = wrong + w, beat + b, checked + c
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = {name: sum(arms[name, i]["candidates"] for i in range(pairs)) for name in ("off", "on")}
    ratio = total["on"] / total["off"] if total["off"] else None
    rate = wrong / checked if checked else None
    head = f"{'arm':8}{'candidates':>11}{'pruned':>8}{'kept':>6}{'full run s':>11}{'pruned run s':>13}"
    print(head + f"{'held-out gain':>15}")
    for (name, i), f in sorted(arms.items(), key=lambda kv: (kv[0][1], kv[0][0] == "on")):
        gain_text = "-" if f["holdout_gain"] is None else f"{f['holdout_gain']:+.4f}"
        print(
            f"{f'{name} {i + 1}':8}{f['candidates']:>11}{f['pruned']:>8}{f['kept']:>6}{f['full_run_s'] or '-':>11}"
            f"{f['pruned_run_s'] or '-':>13}{gain_text:>15}"
        )
    per_pair = [
        f"{arms['on', i]['candidates'] / arms['off', i]['candidates']:.2f}x" if arms["off", i]["candidates"] else "-"
        for i in range(pairs)
    ]
    shown = f"{ratio:.2f}x" if ratio else "-"
    counts = f"{total['on']} / {total['off']} = {shown}"
    print(f"candidates, on / off, all pairs: {counts} (per pair: {', '.join(per_pair)})")
    held = {name: [arms[name, i]["holdout_gain"] for i in range(pairs)] for name in ("off", "on")}
    mean_held = {name: statistics.fmean(v) if all(g is not None for g in v) else None for name, v in held.items()}
    print(
        "held-out gain, mean over pairs: "
        + ", ".join(f"{name} {'-' if g is None else f'{g:+.4f}'}" for name, g in mean_held.items())
    )
    print(
        f"wrongly pruned (kept by the judge): {wrong} of {checked} run to the end"
        + (f" ({rate:.0%})" if rate is not None else "")
    )
    if checked:  # exact (Clopper-Pearson) one-sided 95% upper bound on the rate, from `wrong` of `checked`
        from scipy import stats

        upper = 1.0 if wrong == checked else float(stats.beta.ppf(0.95, wrong + 1, checked - wrong))
        print(f"  95% upper bound on the rate of wrongly pruned candidates: {upper:.0%}")
    print(f"looser: their full run beat the champion's mean: {beat} of {checked}")
    held_ok = mean_held["on"] is not None and (mean_held["off"] is None or mean_held["on"] >= mean_held["off"])
    met = bool(ratio is not None and ratio >= 1.5 and held_ok and rate is not None and rate < 0.05)
    figures_out: dict[str, Any] = {
        f"{name}{i + 1}_{k}": v for (name, i), f in arms.items() for k, v in f.items() if not k.startswith("_")
    }
    figures_out.update(candidates_on=total["on"], candidates_off=total["off"], candidates_ratio=ratio)
    figures_out.update(holdout_gain_on=mean_held["on"], holdout_gain_off=mean_held["off"])
    figures_out.update(wrongly_pruned=wrong, pruned_checked=checked, wrong_rate=rate, full_run_beat_champion=beat)
    print(json.dumps({"benchmark": "pruning", "figures": figures_out, "target": TARGET, "met": met}))
    sys.exit(0)


if __name__ == "__main__":
    main()

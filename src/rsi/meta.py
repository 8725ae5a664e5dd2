"""`rsi meta`: rsi researches its own research program, with the same engine, one level up.

Level 1: the editable file is a program (programs/default.py). One run of the meta-task runs inner research
with that program on each task of a synthetic suite (in process: same loop, proposers, judge and ledger, no
subprocess, no git), each for a fixed budget of runs, and prints the meta-utility: the mean fraction of the
gap from each task's start to its optimum that the inner champion closed, computed from the noise-free
objective at the champion, never from the inner research's own verdicts (a program that loosens its judge
gets no credit for the noise it keeps), averaged over the budget's runs (the area under the improvement
curve) or at its end (UTILITIES). The holdout is the same figure on held-out task families, or (`rsi meta
--holdout examples`) on the real examples at small budgets, researched with the real engine and measured by
their own held-out metric (EXAMPLES).

Level 2: the editable file is the meta-level's own program (the settings of the level-1 research). One run
researches level 1 in process with it for a small budget and prints how much the level-1 champion program
gained over the default program, scored on fresh seeds.

The evaluators are this module, outside the meta-task's repository: a candidate program cannot change them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsi.config import Config, MetricConfig, TaskConfig
from rsi.engine import Limits, default_judge, in_process
from rsi.errors import UserError
from rsi.ledger import Experiment
from rsi.measure import CONFIRM, SCREEN, TaskFunction
from rsi.program import Program, apply_program, default_text, parse_program
from rsi.proposer import KnobsProposer
from rsi.suite import FILE, PLACEMENTS, SyntheticTask, suite


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big one evaluation is: tasks of the suite, inner seeds per task, runs per inner research."""

    tasks: int = 6
    seeds: int = 2
    budget: int = 60
    utility: str = "area"  # one of UTILITIES
    holdout: str = "heldout"  # the meta-task's holdout suite: held-out synthetic families, or the real examples
    placement: str = "mixed"  # where the synthetic tasks' start and optimum lie (rsi.suite.PLACEMENTS)


# What the meta level maximizes, both from the noise-free objective at the inner champion:
# - "area": the area under the improvement curve, the gap the champion had closed after each of the budget's
#   runs, averaged over them. Credits a program for getting there sooner, so it holds for a research stopped
#   at any point of the budget, not only at its end, and it does not saturate where every program ends
#   close to the optimum;
# - "final": the gap the champion closed by the end of the budget.
UTILITIES = ("area", "final")
HOLDOUTS = ("heldout", "examples")

# The real examples at small budgets: runs per inner research (tinygpt trains 15 s a run, as in `rsi demo`).
EXAMPLES = {"tabular": 16, "tinygpt": 8}


@dataclasses.dataclass(frozen=True)
class Progress:
    """What one inner research truly achieved: the gap closed after each run of its budget, and at its end."""

    curve: tuple[float, ...]
    final: float

    @classmethod
    def of(cls, gaps: Sequence[tuple[int, float]], budget: int) -> Progress:
        """From the gap of each champion in turn and the run it was kept at (the start first, at 0): run t
        counts the champion kept at or before it; a keep after the budget's last run counts only at the end."""
        curve = tuple(next(g for at, g in reversed(gaps) if at <= t) for t in range(1, budget + 1))
        return cls(curve, gaps[-1][1])

    def value(self, utility: str) -> float:
        if utility not in UTILITIES:
            raise ValueError(f"unknown meta-utility {utility!r}")
        return statistics.fmean(self.curve) if utility == "area" else self.final


def inner_config(program: Program, name: str = "synthetic", editable: str = FILE) -> Config:
    cfg = Config(
        task=TaskConfig(name=name, editable=[editable], command="(in process)"),
        metric=MetricConfig(name="loss", goal="minimize", pattern=r"^(\S+)$"),
    )
    return apply_program(cfg, program)


def _researched(
    cfg: Config, files: dict[str, str], task: TaskFunction, seed: int, budget: int
) -> list[tuple[int, dict[str, str]]]:
    """One research in process, knobs proposer and default judge, for `budget` runs: its champions in turn,
    each with the number of runs recorded when it was kept (the start first, at 0; the last may have landed
    after `budget` runs, as the experiment under way when the budget ran out is finished)."""
    proposer = KnobsProposer(files, cfg.knobs, cfg.metric.goal, seed=seed)
    research = in_process(cfg, files, task, proposer, judge=default_judge(cfg))
    research.run(Limits(max_runs=budget))
    kept = _kept(research.ledger.experiments())
    return [(0, files)] + [(at, research.champion_files(e.kept_commit or e.commit_sha or "")) for at, e in kept]


def _kept(experiments: Sequence[Experiment]) -> list[tuple[int, Experiment]]:
    """The keeps, each with the number of runs recorded when it was kept: after its last deciding run (the
    champion's own top-up runs come after the keep)."""
    order = {run: i + 1 for i, run in enumerate(sorted(r.id for e in experiments for r in e.runs))}
    return [
        (max((order[r.id] for r in e.runs if r.kind in (SCREEN, CONFIRM)), default=len(order)), e)
        for e in experiments
        if e.id > 0 and e.verdict == "keep" and (e.kept_commit or e.commit_sha) is not None
    ]


def research_task(task: SyntheticTask, program: Program, budget: int, seed: int) -> Progress:
    """One inner research of `task` with `program` for `budget` runs: the gap its champion closed, run by run."""
    champions = _researched(
        inner_config(program), task.files(), functools.partial(task.measure, salt=seed), seed, budget
    )
    return Progress.of([(at, task.gap_closed(files)) for at, files in champions], budget)


def research_example(example: str, program: Program, runs: int, seed: int, keep: Path | None = None) -> Progress:
    """One inner research of a fresh copy of a shipped example with `program` for `runs` runs, with the real
    engine (a git repository, a subprocess per run, the judge) and `seed` as its knobs seed. A real example has
    no known optimum: its progress is each champion's held-out metric as a gain relative to the baseline's
    (the holdout runs on the baseline and on every keep and never guides a verdict). The copy is made in a
    temporary folder, or in `keep` (a new folder), where it stays."""
    from rsi.config import load_config
    from rsi.demo import check_requirements, create
    from rsi.engine import Research, editable_files
    from rsi.judge import improvement
    from rsi.ledger import Ledger
    from rsi.store import Store
    from rsi.workspace import Workspace

    check_requirements(example)
    with tempfile.TemporaryDirectory(prefix="rsi-meta-") as tmp:
        root = create(example, keep or Path(tmp) / example)
        cfg = apply_program(load_config(root), program)
        cfg = cfg.model_copy(update={"knobs": cfg.knobs.model_copy(update={"seed": seed})})

        def proposer(store: Store, start: str) -> KnobsProposer:
            files = editable_files(store, start, cfg)
            return KnobsProposer(files, cfg.knobs, cfg.metric.goal, seed=seed)

        research = Research(root, cfg, proposer)
        try:
            research.run(Limits(max_runs=runs))
        finally:
            research.ledger.close()
        ledger = Ledger(Workspace(root).state / "ledger.sqlite", readonly=True)
        try:
            experiments = ledger.experiments()
        finally:
            ledger.close()
    base = experiments[0].mean("holdout") if experiments else None
    if base is None or base == 0:
        raise UserError(f"the {example} example's baseline has no held-out figure to measure a gain against")
    gaps = [(0, 0.0)]
    for at, e in _kept(experiments):
        held = e.mean("holdout")  # a keep whose holdout failed leaves the champion's figure as it was
        gaps.append((at, gaps[-1][1] if held is None else improvement(held, base, cfg.metric.goal) / abs(base)))
    return Progress.of(gaps, runs)


def utilities(
    program: Program, suite_name: str, scale: Scale, seed: int, examples: Sequence[str] = tuple(EXAMPLES)
) -> dict[str, float]:
    """Level 1's metric in each of its kinds (UTILITIES): the mean over the suite's tasks and `scale.seeds`
    inner seeds; for the real examples, one inner research of each at its small budget (minutes each)."""
    if suite_name == "examples":
        shown = [research_example(name, program, EXAMPLES[name], seed) for name in examples]
        return {kind: statistics.fmean(p.value(kind) for p in shown) for kind in UTILITIES}
    done = [
        research_task(task, program, scale.budget, seed * 1000 + j)
        for task in suite(suite_name, scale.tasks, placement=scale.placement)
        for j in range(scale.seeds)
    ]
    return {kind: statistics.fmean(p.value(kind) for p in done) for kind in UTILITIES}


def utility(program: Program, suite_name: str, scale: Scale, seed: int) -> float:
    """Level 1's metric: the kind of meta-utility the scale names."""
    return utilities(program, suite_name, scale, seed)[scale.utility]


def level2_utility(meta_program: Program, suite_name: str, scale: Scale, seed: int, meta_budget: int = 12) -> float:
    """Level 2's metric: a level-1 research run in process with `meta_program`'s settings, starting from the
    default program, for `meta_budget` runs; the level-1 champion's gain over the default program, both
    scored on `suite_name` with seeds the level-1 research never saw."""
    text = default_text()
    cfg = inner_config(meta_program, "program", "program.py")
    cfg = cfg.model_copy(update={"metric": cfg.metric.model_copy(update={"goal": "maximize"})})

    def level1(files: Mapping[str, str], s: int) -> float:
        return utility(parse_program(files["program.py"]), "train", scale, seed * 7919 + s)

    best = _researched(cfg, {"program.py": text}, level1, seed, meta_budget)[-1][1]["program.py"]
    fresh = 10_000 + seed
    before = utility(parse_program(text), suite_name, scale, fresh)
    return utility(parse_program(best), suite_name, scale, fresh) - before


# ---- the meta-task on disk: a git repository that `rsi run` researches
TOML = """\
# The meta-task: rsi researching its own research program (made by `rsi meta`).
[task]
name = "{name}"
editable = ["{editable}"]
command = "{python} -m rsi.meta evaluate --suite train {scale}"
timeout = "{timeout}s"

[metric]
name = "meta_utility"
goal = "maximize"
pattern = '^meta_utility:\\s*(\\S+)'

[holdout]
command = "{python} -m rsi.meta evaluate --suite {holdout} {scale}"
pattern = '^meta_utility:\\s*(\\S+)'

[knobs]
exclude = ["PROPOSER", "MIN_DELTA", "KNOBS_WEIGHT", "LLM_WEIGHT"]  # the meta suite has no LLM and no swarm
"""


def create(dest: Path, level: int, subject: str, scale: Scale) -> Path:
    """A new meta-task repository at `dest` whose editable file holds `subject` (a program's text)."""
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty: give --dir a new folder, or resume it with rsi meta")
    editable = "program.py" if level == 1 else "meta_program.py"
    parse_program(subject, editable)  # a program that does not load is refused before anything is made
    if scale.holdout == "examples":  # so is a holdout whose examples' packages are missing
        from rsi.demo import check_requirements

        for name in EXAMPLES:
            check_requirements(name)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / editable).write_text(subject, encoding="utf-8")
    timeout = 600 if level == 1 and scale.holdout == "heldout" else 3600  # the examples take minutes each
    (dest / "rsi.toml").write_text(
        TOML.format(
            name=f"meta-level{level}",
            editable=editable,
            python=sys.executable,
            holdout=scale.holdout,
            scale=f"--level {level} --tasks {scale.tasks} --seeds {scale.seeds} --budget {scale.budget} "
            f"--utility {scale.utility} --placement {scale.placement}",
            timeout=timeout,
        ),
        encoding="utf-8",
    )
    (dest / ".gitignore").write_text(".rsi/\n", encoding="utf-8")
    (dest / "meta.json").write_text(json.dumps({"level": level, **dataclasses.asdict(scale)}) + "\n", encoding="utf-8")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "meta-task: rsi's research program"]):
        subprocess.run(
            ["git", "-c", "user.name=rsi", "-c", "user.email=rsi@localhost", *args],
            cwd=dest,
            check=True,
            capture_output=True,
        )
    return dest


# ---- the report: default against improved on held-out tasks
def compare(default: Program, improved: Program, suite_name: str, scale: Scale, seeds: Sequence[int]) -> dict[str, Any]:
    """Both programs on the same tasks and seeds: means, 95% intervals, the ratio, a paired t-test, for the
    scale's kind of meta-utility; `by_utility` has the same figures for every kind, from the same researches."""
    a = [utilities(default, suite_name, scale, s) for s in seeds]
    b = [utilities(improved, suite_name, scale, s) for s in seeds]
    by_utility = {kind: _figures([x[kind] for x in a], [y[kind] for y in b]) for kind in UTILITIES}
    return {"suite": suite_name, "seeds": list(seeds), **by_utility[scale.utility], "by_utility": by_utility}


def _figures(a: list[float], b: list[float]) -> dict[str, Any]:
    from scipy import stats

    def interval(xs: list[float]) -> list[float]:
        if len(xs) < 2:
            return [xs[0], xs[0]]
        half = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
        return [statistics.fmean(xs) - half, statistics.fmean(xs) + half]

    diffs = [y - x for x, y in zip(a, b, strict=True)]
    p = float(stats.ttest_rel(b, a).pvalue) if len(a) > 1 and any(diffs) else 1.0
    return {
        "default": {"mean": statistics.fmean(a), "ci95": interval(a), "runs": a},
        "improved": {"mean": statistics.fmean(b), "ci95": interval(b), "runs": b},
        "ratio": statistics.fmean(b) / statistics.fmean(a) if statistics.fmean(a) > 0 else None,
        "p_value": p,
    }


def settings(root: Path) -> tuple[int, Scale]:
    """The level and scale a meta-task was made with."""
    try:
        found = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        # a meta-task whose meta.json names no measure was made when the final gap was the only one
        # and one that names no placement when the hinted one was the only one
        kind, holdout = found.get("utility", "final"), found.get("holdout", "heldout")
        placement = found.get("placement", "hinted")
        level = int(found["level"])
        scale = Scale(int(found["tasks"]), int(found["seeds"]), int(found["budget"]), kind, holdout, placement)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{root} is not a meta-task made by rsi meta (no readable meta.json)") from None
    if kind not in UTILITIES:
        raise UserError(f"{root / 'meta.json'}: utility {kind!r} is not one of {', '.join(UTILITIES)}")
    if holdout not in HOLDOUTS:
        raise UserError(f"{root / 'meta.json'}: holdout {holdout!r} is not one of {', '.join(HOLDOUTS)}")
    if placement not in PLACEMENTS:
        raise UserError(f"{root / 'meta.json'}: placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    return level, scale


def report(root: Path, seeds: int) -> dict[str, Any]:
    """The program the meta-research started from against its champion, on held-out tasks and fresh seeds."""
    level, scale = settings(root)
    if level != 1:
        raise UserError("rsi meta report compares level-1 programs; a level-2 research is read with rsi status")
    before, after, commit = champion_text(root)
    seeds_used = range(900_001, 900_001 + seeds)
    found = compare(parse_program(before), parse_program(after), scale.holdout, scale, seeds_used)
    return {**found, "commit": commit, "diff": program_diff(before, after), "scale": dataclasses.asdict(scale)}


def program_diff(before: str, after: str) -> str:
    """A unified diff of two programs' texts."""
    return "".join(
        difflib.unified_diff(before.splitlines(True), after.splitlines(True), "a/program.py", "b/program.py")
    )


def champion_text(root: Path) -> tuple[str, str, str]:
    """The meta-task's editable file at its start and at its champion, and the champion's commit."""
    from rsi.ledger import Ledger
    from rsi.workspace import Workspace

    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    try:
        kept = ledger.experiments("verdict = 'keep'")
        start = ledger.get("start_commit") or ""
    finally:
        ledger.close()
    ws = Workspace(root)
    name = "program.py" if ws.files(start, ["program.py"]) else "meta_program.py"
    best = (kept[-1].kept_commit or kept[-1].commit_sha or start) if kept else start
    return ws.read(start, name), ws.read(best, name), best


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rsi.meta evaluate ...`: the frozen evaluator the meta-task's runs call."""
    parser = argparse.ArgumentParser(prog="python -m rsi.meta")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score the program file in the current folder")
    ev.add_argument("--level", type=int, choices=(1, 2), default=1)
    ev.add_argument("--suite", choices=("train", *HOLDOUTS), default="train")
    ev.add_argument("--examples", default=",".join(EXAMPLES), help="with --suite examples: which, comma-separated")
    ev.add_argument("--tasks", type=int, default=Scale.tasks)
    ev.add_argument("--seeds", type=int, default=Scale.seeds)
    ev.add_argument("--budget", type=int, default=Scale.budget)
    # the default is what a meta-task measured before its rsi.toml named the measure (create() always names it)
    ev.add_argument("--utility", choices=UTILITIES, default="final", help="what the meta-utility measures")
    ev.add_argument("--placement", choices=PLACEMENTS, default="hinted", help="the synthetic tasks' placement")
    ev.add_argument("--meta-budget", type=int, default=12, help="level 2: runs of the level-1 research")
    args = parser.parse_args(argv)
    name = "program.py" if args.level == 1 else "meta_program.py"
    try:
        program = parse_program(Path(name).read_text(encoding="utf-8"), name)
    except (OSError, UserError) as e:
        print(f"rsi.meta: {e}", file=sys.stderr)
        return 2
    seed = int(os.environ.get("RSI_SEED", "1"))
    scale = Scale(args.tasks, args.seeds, args.budget, args.utility, placement=args.placement)
    examples = [name for name in args.examples.split(",") if name]
    if unknown := [name for name in examples if name not in EXAMPLES]:
        print(f"rsi.meta: unknown example(s) {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}", file=sys.stderr)
        return 2
    try:
        if args.level == 1:
            value = utilities(program, args.suite, scale, seed, examples)[scale.utility]
        else:
            value = level2_utility(program, args.suite, scale, seed, meta_budget=args.meta_budget)
    except UserError as e:  # an example whose packages are missing, or whose baseline has no held-out figure
        print(f"rsi.meta: {e}", file=sys.stderr)
        return 2
    print(f"meta_utility: {value:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does rsi improve its own research program? The original program against the one `rsi meta` found.

1. `rsi meta` researches the original program (`programs/original.py`, the first default, frozen: every meta
   benchmark compares against it) with the real command: a git repository, the engine, the knobs proposer
   tuning the program's values, the sequential judge, scored by inner research on the training families of
   synthetic tasks.
2. `rsi meta report` re-scores the original and the champion on the held-out families (generators the
   meta-research never saw) with fresh seeds: the mean meta-utility of each, 95% intervals over seeds, the
   ratio, and a paired t-test. The meta-utility is computed from the noise-free objective at the inner
   champion, as the fraction of the gap from start to optimum closed: `--utility area` (the default)
   averages it over the inner budget's runs (the area under the improvement curve), `final` takes it at the
   budget's end. Both are reported, from the same inner researches; the one named is the one researched.
   `--found FILE` skips the meta-research and scores FILE (the shipped default, say) against the original
   the same way, or against `--against FILE`. The synthetic tasks' placement (`--placement`, rsi.suite) is
   "mixed" unless told: every second task starts at the middle of a range derived around the file's value.
3. With `--switches`, both programs are also scored on the switches family (rsi.suite: a bowl with categorical
   knobs, one right choice each; no training or held-out family has any), at the same scale and seeds.
   With `--examples N`, both programs are scored on the real examples suite (`rsi meta --holdout examples`:
   tabular and tinygpt at small budgets, the held-out gain relative to the baseline's) with N seeds.
4. With `--tinygpt MIN`, both programs research `examples/tinygpt` for MIN minutes each (`rsi run
   --program`), one after the other (`--tinygpt-repeats N` times, in alternating order; the i-th pair's
   researches both seed their knobs proposer with `--tinygpt-seed` + i, so repeats try other candidates), and
   the held-out gain (`test_bpb`) of each research is reported, with the mean per program.

Target: on held-out tasks the improved program's meta-utility is at least 1.2x the original's, with p < 0.05;
on tinygpt at equal budget the improved program is not worse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rsi.demo import create
from rsi.meta import UTILITIES, Scale, compare, program_diff
from rsi.program import original_text, parse_program
from rsi.suite import PLACEMENTS


def rsi(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "rsi", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rsi {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


def tinygpt(program: Path, minutes: float, where: Path, seed: int) -> dict[str, Any]:
    """One research of a fresh copy of examples/tinygpt with `program`, its knobs proposer seeded with `seed`."""
    root = create("tinygpt", where)
    with (root / "rsi.toml").open("a", encoding="utf-8") as toml:
        toml.write(f"\n[knobs]\nseed = {seed}\n")
    git = ["git", "-c", "user.name=rsi", "-c", "user.email=rsi@localhost", "commit", "-qam", f"knobs seed {seed}"]
    subprocess.run(git, cwd=root, check=True, capture_output=True)
    rsi("run", str(root), "--time-budget", f"{minutes}m", "--program", str(program))
    status = json.loads(rsi("status", str(root), "--json").stdout)
    return {
        "experiments": len(status["experiments"]),
        "selection_gain": status["selection_gain"],
        "holdout_gain": status["holdout_gain"],
    }


def print_per_seed(at: dict[str, Any], kinds: list[str], base_name: str) -> None:
    """Both programs' means on a suite, the ratio, the paired p, and every seed's pair."""
    head = f"{'meta-utility':13s} {base_name:>9s} {'improved':>9s} {'ratio':>7s} {'p':>8s}"
    print(f"{head}  per seed ({base_name}/improved)")
    for kind in kinds:
        row = at["by_utility"][kind]
        pairs = " ".join(
            f"{a:.3f}/{b:.3f}" for a, b in zip(row["default"]["runs"], row["improved"]["runs"], strict=True)
        )
        print(
            f"{kind:13s} {row['default']['mean']:9.3f} {row['improved']['mean']:9.3f} "
            f"{row['ratio'] or 0.0:6.3f}x {row['p_value']:8.2g}  {pairs}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small meta-research (minutes, not a verdict)")
    parser.add_argument("--experiments", type=int, default=None, help="meta experiments (default 40, quick 8)")
    parser.add_argument("--seeds", type=int, default=None, help="held-out seeds per program (default 10, quick 3)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=6, help="synthetic tasks per meta run")
    parser.add_argument("--inner-seeds", type=int, default=2, help="inner researches per task and meta run")
    parser.add_argument("--budget", type=int, default=60, help="runs per inner research")
    parser.add_argument(
        "--utility", choices=UTILITIES, default="area", help="the meta-utility researched and reported first"
    )
    parser.add_argument(
        "--placement", choices=PLACEMENTS, default="mixed", help="where the synthetic tasks start (rsi.suite)"
    )
    parser.add_argument(
        "--against", type=Path, default=None, help="with --found: compare with this program instead of the original"
    )
    parser.add_argument("--dir", type=Path, default=None, help="keep the meta-task here (default: a temp dir)")
    parser.add_argument(
        "--examples", type=int, default=0, help="also compare both programs on the real examples suite, N seeds"
    )
    parser.add_argument(
        "--switches", action="store_true", help="also compare both programs on the switches family (rsi.suite)"
    )
    parser.add_argument("--tinygpt", type=float, default=0.0, help="minutes of tinygpt research per program")
    parser.add_argument("--tinygpt-repeats", type=int, default=1, help="tinygpt researches per program")
    parser.add_argument("--tinygpt-seed", type=int, default=0, help="the first pair's knobs seed (then +1 a pair)")
    parser.add_argument(
        "--found", type=Path, default=None, help="skip the meta-research: compare this program with the original"
    )
    parser.add_argument(
        "--budgets",
        default="",
        help="also compare both programs with these runs per inner research (e.g. 30,120): does the gain hold "
        "at budgets the meta-research never saw?",
    )
    args = parser.parse_args()
    experiments = args.experiments or (8 if args.quick else 40)
    seeds = args.seeds or (3 if args.quick else 10)
    sizes = (3, 1, 40) if args.quick else (args.tasks, args.inner_seeds, args.budget)
    scale = Scale(sizes[0], sizes[1], sizes[2], args.utility, placement=args.placement)
    if args.against is not None and args.found is None:
        sys.exit("--against needs --found: a meta-research always starts from the original")
    base_text = args.against.read_text(encoding="utf-8") if args.against else original_text()
    base_name = "against" if args.against else "original"
    tmp = Path(tempfile.mkdtemp(prefix="rsi-meta-bench-"))
    base = tmp / "base.py"  # the program compared against: the original unless --against
    base.write_text(base_text, encoding="utf-8")
    if args.found is not None:
        improved_text = args.found.read_text(encoding="utf-8")
        found = compare(
            parse_program(base_text),
            parse_program(improved_text),
            "heldout",
            scale,
            range(900_001, 900_001 + seeds),
        )
        found["scale"] = dataclasses.asdict(scale)
        found["diff"] = program_diff(base_text, improved_text)
        print(f"\n{args.found} against {args.against or 'the original program'}; held-out: {found['scale']}")
    else:  # the meta-research starts from the frozen original: every meta benchmark compares against it
        sized = [f"--{k}={v}" for k, v in zip(("tasks", "seeds", "budget"), sizes, strict=True)]
        where = args.dir or tmp / "meta"
        started = time.monotonic()
        limits = ["--max-experiments", str(experiments), "--workers", str(args.workers)]
        sized += ["--utility", args.utility, "--placement", args.placement]
        rsi("meta", "--dir", str(where), "--program", str(base), *limits, *sized)
        searched = time.monotonic() - started
        found = json.loads(rsi("meta", "report", "--dir", str(where), "--seeds", str(seeds), "--json").stdout)
        improved_text = subprocess.run(
            ["git", "show", f"{found['commit']}:program.py"], cwd=where, capture_output=True, text=True, check=True
        ).stdout
        print(f"\nmeta-research: {experiments} experiments in {searched / 60:.1f} min; held-out: {found['scale']}")
    print(f"{'meta-utility':14s} {'program':10s} {'held-out':>9s} {'95% interval':>17s} {'ratio':>7s} {'p':>8s}")
    researched = found["scale"]["utility"]  # an existing --dir keeps the measure it was made with
    kinds = [researched, *(k for k in UTILITIES if k != researched)]  # the one researched first
    for kind in kinds:
        row = found["by_utility"][kind]
        for name, key in ((base_name, "default"), ("improved", "improved")):
            lo, hi = row[key]["ci95"]
            ratio = "" if key == "default" or row["ratio"] is None else f"{row['ratio']:.3f}x"
            p = "" if key == "default" else f"{row['p_value']:.2g}"
            shown = kind + (" (researched)" if kind == researched else "")
            print(f"{shown:14s} {name:10s} {row[key]['mean']:9.4f} {f'[{lo:.3f}, {hi:.3f}]':>17s} {ratio:>7s} {p:>8s}")
    ratio = found["ratio"]
    met = ratio is not None and ratio >= 1.2 and found["p_value"] < 0.05
    shown = "n/a" if ratio is None else f"{ratio:.3f}x"
    print(
        f"{researched}: ratio {shown} (target >= 1.2x), paired t-test p = {found['p_value']:.3g} (target < 0.05): "
        f"{'met' if met else 'NOT met'}"
    )
    print("\nthe program's diff:\n" + (found["diff"] or "(none: the original stayed the champion)"))
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    if budgets:
        print("\nthe same two programs with other inner budgets (held-out, same seeds)")
        head = ("runs per inner research", "meta-utility", base_name, "improved", "ratio", "p")
        print(" ".join(f"{h:>{w}s}" for h, w in zip(head, (24, 13, 9, 9, 7, 8), strict=True)))
        for budget in [sizes[2], *budgets]:
            at = found  # the budget researched at is the comparison above
            if budget != sizes[2]:
                at = compare(
                    parse_program(base_text),
                    parse_program(improved_text),
                    "heldout",
                    dataclasses.replace(scale, budget=budget),
                    range(900_001, 900_001 + seeds),
                )
            mark = "" if budget != sizes[2] else "  (researched at)"
            for kind in kinds:
                row = at["by_utility"][kind]
                print(
                    f"{budget:24d} {kind:>13s} {row['default']['mean']:9.3f} {row['improved']['mean']:9.3f} "
                    f"{row['ratio'] or 0.0:6.3f}x {row['p_value']:8.2g}{mark}"
                )
    if args.switches:
        print(
            f"\nthe switches family (categorical knobs, which no training or held-out family has), {seeds} seeds, "
            f"{sizes[0]} tasks x {sizes[1]} seeds x {sizes[2]} runs, the same two programs"
        )
        at = compare(
            parse_program(base_text), parse_program(improved_text), "switches", scale, range(900_001, 900_001 + seeds)
        )
        print_per_seed(at, kinds, base_name)
    if args.examples > 0:
        print(f"\nthe real examples suite (`--holdout examples`), {args.examples} seeds, the same two programs")
        at = compare(
            parse_program(base_text), parse_program(improved_text), "examples", scale, range(1, args.examples + 1)
        )
        print_per_seed(at, kinds, base_name)
    if args.tinygpt > 0:
        improved = tmp / "improved.py"
        improved.write_text(improved_text, encoding="utf-8")
        programs = {base_name: base, "improved": improved}
        rows: list[tuple[str, dict[str, Any]]] = []
        for i in range(args.tinygpt_repeats):  # one after the other, the order alternating against drift
            for name in sorted(programs, reverse=i % 2 == 1):
                where = tmp / f"tinygpt-{name}-{i}"
                rows.append((name, tinygpt(programs[name], args.tinygpt, where, seed=args.tinygpt_seed + i)))
        print(f"\ntinygpt, {args.tinygpt:g} min per research (held-out test_bpb gain, positive is better)")
        print(f"{'program':10s} {'experiments':>12s} {'selection gain':>15s} {'held-out gain':>14s}")
        for name, row in rows:
            sel = "-" if row["selection_gain"] is None else f"{row['selection_gain']:.4f}"
            held = "-" if row["holdout_gain"] is None else f"{row['holdout_gain']:.4f}"
            print(f"{name:10s} {row['experiments']:12d} {sel:>15s} {held:>14s}")
        a, b = (
            statistics.fmean(row["holdout_gain"] or 0.0 for n, row in rows if n == name)
            for name in (base_name, "improved")
        )
        each = f"mean of {args.tinygpt_repeats} researches each" if args.tinygpt_repeats > 1 else "one research each"
        print(f"improved not worse on tinygpt: {'met' if b >= a else 'NOT met'} ({b:.4f} against {a:.4f}, {each})")


if __name__ == "__main__":
    main()

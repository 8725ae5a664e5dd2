"""How often each judge keeps what it should, on synthetic candidates whose true effects are known.

The research loop is rsi's own (engine, ledger, seeds, replication, champion re-measurement), run in process on
a task whose metric is `quality + noise`: each candidate sets `quality` to the champion's value plus a true
effect drawn from a mix, in units of the noise sd: 60% nulls (0: seed-only changes, no-ops), 25% regressions
(-1), 10% gains of +1 and 5% gains of +2. True gains are rare in real research (autoresearch's published runs
kept 15 of 83 changes, noise keeps included). Noise is Gaussian or heavy-tailed (Student t, 3 dof, scaled to
unit sd); the same code and seed give the same number, different code independent noise. A third model,
`seeded`, is Gaussian with 70% of its variance given by the seed to every code alike (as a seed's initial
weights and data order would), so that runs of two commits on the same seed differ less than the sd says:
what the judge gains by pairing seeds once its ledger shows that. A fourth, `spiky` (`--noises spiky`, not in
the default set: the issue's targets are for the other models), is Gaussian with one run in SPIKE_EVERY worse
by SPIKE sds, the effects in units of the Gaussian part: a time-limited training run that another process
starved of CPU does fewer steps (on tinygpt with 5 s of training, one run of 58 was 0.8 worse than its
siblings, whose sd was about 0.1, while another process used a fifth of the cores).

Judges compared, each in the same loop:
- rsi: the sequential judge (screening with Bonferroni looks and futility, replication on fresh seeds);
- rsi unpaired: the same, never pairing replication's last look (what it was before);
- autoresearch: one baseline run, one run per candidate, kept if strictly better than the champion's number;
- two-sigma: five baseline runs for sigma, one run per candidate, kept if better by 2 sigma.
Runs per candidate count every run after the baseline's first measurement, champion re-measurements included.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsi.config import Config
from rsi.engine import Limits, default_judge, in_process
from rsi.judge import Decision, Goal, Judge, Noise, SequentialJudge, ThresholdJudge, improvement
from rsi.ledger import Experiment
from rsi.program import Program, apply_program, default_program, load_program
from rsi.proposer import Context, Proposal

MIX = {"null": (0.0, 0.60), "regression": (-1.0, 0.25), "gain_1sd": (1.0, 0.10), "gain_2sd": (2.0, 0.05)}


SEEDED = 0.7  # the `seeded` model's share of the variance that comes with the seed
SPIKE, SPIKE_EVERY = 8.0, 20  # the `spiky` model: one run in SPIKE_EVERY is worse by SPIKE sds
NOISES = ("gauss", "t3", "seeded", "spiky")
JUDGES = ("rsi", "rsi unpaired", "autoresearch", "two-sigma")


def noise_draw(kind: str, key: str) -> float:
    """Deterministic noise for (code, seed): unit sd, Gaussian or Student t with 3 dof (`spiky`: a Gaussian of unit
    sd with rare spikes)."""
    if kind == "seeded":  # key is "task|code|seed": the seed's part leaves the code out
        task, _, seed = key.split("|")
        return math.sqrt(SEEDED) * noise_draw("gauss", f"{task}|{seed}") + math.sqrt(1 - SEEDED) * noise_draw(
            "gauss", key
        )
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    if kind == "gauss":
        return rng.gauss(0.0, 1.0)
    if kind == "spiky":  # worse is lower: the task is maximized
        return rng.gauss(0.0, 1.0) - (SPIKE if rng.randrange(SPIKE_EVERY) == 0 else 0.0)
    z, chi2 = rng.gauss(0.0, 1.0), sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(3))
    return z / math.sqrt(chi2 / 3) / math.sqrt(3)  # t(3) has variance 3


def quality(files: Mapping[str, str]) -> float:
    return float(files["task.py"].split("quality = ")[1].split("\n")[0])


class MixProposer:
    """Proposes quality := champion's quality + a true effect from the mix; remembers which was which."""

    name = "mix"
    done_reason = ""
    overlap = False

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = 0

    def propose(self, ctx: Context) -> Proposal | None:
        self.count += 1
        kinds = list(MIX)
        kind = self.rng.choices(kinds, weights=[MIX[k][1] for k in kinds])[0]
        effect = MIX[kind][0]
        text = f"quality = {quality(ctx.files) + effect!r}\nnote = {self.count}\n"  # `note` makes every null new
        return Proposal({"task.py": text}, f"{kind} {effect:+g}", {"kind": kind})

    def observe(self, exp: Experiment) -> None:
        return None


@dataclass(frozen=True)
class TwoSigmaJudge:
    """One run per candidate, kept when better than the champion by two baseline sds."""

    replicate: int = 0

    def decide(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
    ) -> Decision:
        if not candidate or candidate[-1] is None or not champion or noise is None:
            return Decision("discard", "no comparison possible")
        gain = improvement(candidate[-1], statistics.fmean(champion), goal)
        return Decision("keep" if gain > 2 * noise.sd else "discard", f"gain {gain:.3g}")

    def confirm(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float | None],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        return Decision("keep", "no replication")

    def detectable(self, champion_runs: int, noise: Noise | None, deletes_code: bool = False) -> float | None:
        return None

    def with_repeats(self, most: int) -> Judge:
        return self

    def holds(
        self,
        fresh: Sequence[float],
        before: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        among: tuple[Sequence[float], Sequence[float]] = ((), ()),
    ) -> Decision:
        return Decision("keep", "nothing is re-measured")


def config(baseline_repeats: int) -> Config:
    return Config.model_validate(
        {
            "task": {"name": "synthetic", "editable": ["task.py"], "command": "in-process"},
            "metric": {"name": "score", "goal": "maximize", "pattern": "(x)"},
            "judge": {"baseline_repeats": baseline_repeats},
        }
    )


def research(judge_name: str, noise: str, candidates: int, seed: int, program: Program) -> dict[str, float]:
    p = program
    rsi = default_judge(apply_program(config(p.baseline_repeats), p))  # the judge `rsi run` makes
    assert isinstance(rsi, SequentialJudge)
    judges: dict[str, tuple[Judge, int]] = {
        "rsi": (rsi, p.baseline_repeats),
        "rsi unpaired": (dataclasses.replace(rsi, paired=False), p.baseline_repeats),
        "autoresearch": (ThresholdJudge(0.0), 1),
        "two-sigma": (TwoSigmaJudge(), 5),
    }
    judge, repeats = judges[judge_name]

    def task(files: Mapping[str, str], run_seed: int) -> float:
        return quality(files) + noise_draw(noise, f"{seed}|{files['task.py']}|{run_seed}")

    r = in_process(config(repeats), {"task.py": "quality = 0.0\nnote = 0\n"}, task, MixProposer(seed), judge=judge)
    r.run(Limits(max_experiments=candidates + 1))
    exps = r.ledger.experiments()
    by_kind: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for e in exps[1:]:
        by_kind[e.params["kind"]] += 1
        if e.verdict == "keep":
            kept[e.params["kind"]] += 1
    total_runs = sum(len(e.metrics()) for e in exps) - 1  # the baseline's first run is the common start
    return {
        "false_keep_rate": kept["null"] / max(by_kind["null"], 1),
        "keep_rate_2sd": kept["gain_2sd"] / max(by_kind["gain_2sd"], 1),
        "keep_rate_1sd": kept["gain_1sd"] / max(by_kind["gain_1sd"], 1),
        "regressions_kept": kept["regression"] / max(by_kind["regression"], 1),
        "runs_per_candidate": total_runs / max(len(exps) - 1, 1),
        "nulls": by_kind["null"],
        "gains_2sd": by_kind["gain_2sd"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer candidates (about a minute)")
    ap.add_argument("--tasks", type=int, help="researches of 1000 candidates per judge and noise (default 6)")
    ap.add_argument("--noises", default="gauss,t3,seeded", help=f"comma-separated, of {','.join(NOISES)}")
    ap.add_argument("--judges", default=",".join(JUDGES), help=f"comma-separated (quoted), of {','.join(JUDGES)}")
    ap.add_argument("--program", type=Path, help="rsi's judge settings from this research program (default: shipped)")
    args = ap.parse_args()
    noises = args.noises.split(",")
    if unknown := [n for n in noises if n not in NOISES]:
        ap.error(f"--noises: unknown {', '.join(unknown)} (known: {', '.join(NOISES)})")
    judges = list(dict.fromkeys(args.judges.split(",")))
    if unknown := [j for j in judges if j not in JUDGES]:
        ap.error(f"--judges: unknown {', '.join(unknown)} (known: {', '.join(JUDGES)})")
    if "rsi" in judges and "autoresearch" not in judges:
        ap.error("--judges: with rsi, autoresearch too: rsi's runs per candidate are held to the rule's")
    program = load_program(args.program) if args.program else default_program()
    candidates, tasks = (300, 3) if args.quick else (1000, 6)
    tasks = args.tasks or tasks
    figures: dict[str, dict[str, dict[str, float]]] = {}
    heads = f"{'false keeps':>12}{'2sd kept':>10}{'+-':>6}{'1sd kept':>10}{'runs/cand':>11}{'nulls':>8}{'2sd':>6}"
    print(f"{'noise':8}{'judge':16}{heads}")
    for noise in noises:
        figures[noise] = {}
        for name in judges:
            rows = [research(name, noise, candidates, seed, program) for seed in range(tasks)]
            nulls = sum(r["nulls"] for r in rows)
            gains = sum(r["gains_2sd"] for r in rows)
            fig = {
                "false_keep_rate": sum(r["false_keep_rate"] * r["nulls"] for r in rows) / nulls,
                "keep_rate_2sd": sum(r["keep_rate_2sd"] * r["gains_2sd"] for r in rows) / gains,
                "keep_rate_1sd": statistics.fmean(r["keep_rate_1sd"] for r in rows),
                "runs_per_candidate": statistics.fmean(r["runs_per_candidate"] for r in rows),
                "null_candidates": nulls,
            }
            rate = fig["keep_rate_2sd"]
            fig["keep_rate_2sd_se"] = (rate * (1 - rate) / gains) ** 0.5  # its sampling error, binomial
            figures[noise][name] = {k: round(v, 4) for k, v in fig.items()}
            print(
                f"{noise:8}{name:16}{fig['false_keep_rate']:12.2%}{rate:10.1%}{fig['keep_rate_2sd_se']:6.1%}"
                f"{fig['keep_rate_1sd']:10.1%}{fig['runs_per_candidate']:11.2f}{nulls:8d}{gains:6d}",
                flush=True,
            )
    met = (
        all(
            f["rsi"]["false_keep_rate"] <= 0.01
            and f["rsi"]["keep_rate_2sd"] >= 0.8
            and f["rsi"]["runs_per_candidate"] <= 3 * f["autoresearch"]["runs_per_candidate"]
            for f in figures.values()
        )
        if "rsi" in judges
        else None  # rsi not run: nothing to judge
    )
    target = "rsi: false keeps <= 1% of nulls, >= 80% of 2-sigma gains kept, <= 3x autoresearch's runs per candidate"
    print(json.dumps({"benchmark": "judge", "figures": figures, "target": target, "met": met}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()

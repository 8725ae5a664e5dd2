"""The judge through the real loop, in process: what it keeps, what it refuses, and what it flags."""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping

import pytest

import rsi.engine
import rsi.judge
from rsi.config import Config
from rsi.engine import Limits, in_process
from rsi.judge import SIMPLER_RUNS, Noise, NoisePool, PairPool, SequentialJudge, looks, pooled_noise
from rsi.ledger import Experiment
from rsi.proposer import Context, Proposal
from rsi.status import status_json


def config(goal: str = "minimize") -> Config:
    return Config.model_validate(
        {
            "task": {"name": "t", "editable": ["f.py"], "command": "in-process"},
            "metric": {"name": "loss", "goal": goal, "pattern": "(x)"},
        }
    )


class Scripted:
    name = "scripted"
    done_reason = "its script is done"
    overlap = False

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    def propose(self, ctx: Context) -> Proposal | None:
        return Proposal({"f.py": self.texts.pop(0)}, f"variant {len(self.texts)}") if self.texts else None

    def observe(self, exp: Experiment) -> None:
        return None


def value(files: Mapping[str, str], name: str) -> float:
    for line in files["f.py"].splitlines():
        if line.startswith(f"{name} = "):
            return float(line.split(" = ")[1])
    return 0.0


def noisy(files: Mapping[str, str], seed: int) -> float:
    return value(files, "loss") + random.Random(f"{seed}{files['f.py']}").gauss(0, 0.1)


def test_a_real_gain_is_kept_and_replicated_a_null_is_not() -> None:
    base = "loss = 1.0\n"
    r = in_process(config(), {"f.py": base}, noisy, Scripted(["loss = 1.0\n# a comment\n", "loss = 0.5\n"]))
    r.run(Limits(max_experiments=10))
    base_exp, null, gain = r.ledger.experiments()
    assert null.verdict in ("discard", "inconclusive") and not null.reverted
    assert gain.verdict == "keep"
    kinds = [run.kind for run in gain.runs]
    assert "screen" in kinds and kinds.count("confirm") == 4 and kinds.count("fresh") >= 5
    assert len([run for run in base_exp.runs if run.kind == "fresh"]) >= 5 + 4  # replication's champion arm


def test_deleting_code_at_no_cost_is_kept_by_the_simplicity_rule() -> None:
    base = "loss = 1.0\nunused_a = 1\nunused_b = 2\nunused_c = 3\n"
    r = in_process(config(), {"f.py": base}, noisy, Scripted(["loss = 1.0\n"]))
    r.run(Limits(max_experiments=2))
    exp = r.ledger.experiments()[1]
    assert exp.verdict == "keep" and "deletes code" in exp.reason
    assert r.experimenter.branch_head() == exp.kept_commit


def test_a_keep_whose_held_out_result_is_worse_is_flagged_not_reverted() -> None:
    def holdout(files: Mapping[str, str], seed: int) -> float:
        return value(files, "overfit") + 1.0  # worse when the candidate overfits the selection data

    texts = ["loss = 0.5\noverfit = 1.0\n"]
    r = in_process(config(), {"f.py": "loss = 1.0\noverfit = 0.0\n"}, noisy, Scripted(texts), holdout=holdout)
    r.run(Limits(max_experiments=2))
    s = status_json(r.ledger)
    kept = s["experiments"][1]
    assert kept["verdict"] == "keep" and kept["holdout"] == 2.0 and s["baseline"]["holdout"] == 1.0
    assert "worse than the baseline's" in kept["holdout_flag"]
    assert s["holdout_flags"] == 1 and s["holdout_gain"] < 0 < s["selection_gain"]


def test_screening_decisions_and_bounds() -> None:
    judge = SequentialJudge()
    noise = Noise(1.0, 100)
    champion = [0.0] * 8
    assert looks(8) == [1, 2, 4, 8] and looks(5) == [1, 2, 4, 5]
    assert judge.decide([5.0], champion, "maximize", noise).verdict == "keep"
    assert judge.decide([-3.0], champion, "maximize", noise).verdict == "discard"
    assert judge.decide([1.5], champion, "maximize", noise).verdict == "more"
    assert judge.decide([1.5, None], champion, "maximize", noise).verdict == "discard"
    assert judge.decide([0.8, 0.8, 0.8], champion, "maximize", noise).verdict == "more"  # not a look: 3 runs
    assert judge.decide([5.0], champion, "minimize", noise).verdict == "discard"
    assert judge.confirm([2.0] * 4, [0.0] * 4, "maximize", noise).verdict == "keep"
    assert judge.confirm([0.3] * 4, [0.0] * 4, "maximize", noise).verdict == "discard"
    detectable = judge.detectable(8, noise)
    assert detectable is not None and 1.0 < detectable < 2.5
    assert pooled_noise([[1.0, 3.0], [2.0]]) == Noise(2**0.5, 1)


def test_what_the_judge_calls_detectable_it_keeps_about_80_percent_of_the_time() -> None:
    judge, noise, rng = SequentialJudge(), Noise(1.0, 30), random.Random(3)
    champion = [0.0, 0.3, -0.3, 0.0]  # mean 0, four runs

    def kept(gain: float, deletes: bool, trials: int = 1000) -> float:
        keeps = 0
        for _ in range(trials):
            runs: list[float | None] = []
            while True:
                runs.append(rng.gauss(gain, 1.0))
                decision = judge.decide(runs, champion, "maximize", noise, deletes)
                if decision.verdict != "more" or len(runs) >= judge.max_repeats:
                    break
            keeps += decision.verdict == "keep"
        return keeps / trials

    change, deletion = judge.detectable(4, noise), judge.detectable(4, noise, deletes_code=True)
    assert change is not None and deletion is not None and deletion < change
    assert 0.7 < kept(change, False) < 0.9 and kept(change - 1.0, False) < 0.35
    assert kept(deletion, True) >= 0.75 and kept(deletion - 1.0, True) < 0.35  # the simplicity rule's level
    assert deletion <= 0.0  # it keeps most deletions on par, so it never asks one to beat the champion
    # with under SIMPLER_RUNS runs the simplicity rule never keeps: a deletion must show a gain like any change
    short = judge.with_repeats(SIMPLER_RUNS - 1)
    assert short.detectable(4, noise, deletes_code=True) == short.detectable(4, noise) > change


def test_the_incremental_noise_pool_gives_the_same_figure_to_the_bit() -> None:
    """The engine asks for the pooled noise after every run: NoisePool recomputes only experiments with new
    runs, and must agree exactly with pooled_noise over everything, however the runs arrive."""
    rng = random.Random(5)
    pool, samples = NoisePool(), {}
    for _ in range(400):
        exp_id = rng.randrange(12)
        samples.setdefault(exp_id, []).append(rng.lognormvariate(0, 2))
        assert pool(samples) == pooled_noise(list(samples.values()))
    assert pool(samples) is not None


def test_replication_keeps_a_large_effect_after_one_pair_and_waits_for_the_rest_otherwise() -> None:
    judge, noise = SequentialJudge(), Noise(1.0, 40)
    huge = judge.confirm([0.0], [10.0], "minimize", noise)  # ten noise sds better on the first fresh pair
    assert huge.verdict == "keep" and huge.reason.startswith("replicated on 1 fresh seed:")
    assert judge.confirm([0.0], [2.0], "minimize", noise).verdict == "more"  # 2 sds on one pair: not enough yet
    assert judge.confirm([0.0, 0.1], [2.0, 2.1], "minimize", noise).verdict == "more"  # no look at 2 of 4
    four = judge.confirm([0.0, 0.1, 0.0, 0.1], [2.0, 2.1, 2.0, 2.1], "minimize", noise)
    assert four.verdict == "keep" and four.reason.startswith("replicated on 4 fresh seeds")
    assert judge.confirm([0.0, 0.1, 0.0, 0.1], [0.1, 0.0, 0.1, 0.0], "minimize", noise).verdict == "discard"
    # the first look spends a tenth of alpha_c: 3 sds on one pair (se 1.41) is below its bound, 3.5 is above
    assert judge.confirm([0.0], [3.0], "minimize", noise).verdict == "more"
    assert judge.confirm([0.0], [3.5], "minimize", noise).verdict == "keep"
    assert judge.confirm([None], [1.0], "minimize", noise).verdict == "discard"


def test_a_keep_lands_before_its_top_up_and_a_cut_top_up_is_finished_first() -> None:
    """A deadline or a kill during the new champion's top-up must not lose a replicated keep: the keep lands
    (branch and ledger) right after replication and the holdout, the top-up comes after, and a top-up cut short
    is finished before the next candidate is compared with the champion."""
    from rsi.measure import fresh_seed

    class Cut(BaseException):  # what a hard deadline raises in the middle of a run
        pass

    first_top_up = fresh_seed(1, SequentialJudge().replicate + 1)
    cut = [True]

    def task(files: Mapping[str, str], seed: int) -> float:
        if cut[0] and seed == first_top_up:
            raise Cut
        return noisy(files, seed)

    proposer = Scripted(["loss = 0.3\n", "loss = 0.29\n"])
    r = in_process(config(), {"f.py": "loss = 1.0\n"}, task, proposer, holdout=noisy)
    with pytest.raises(Cut):  # the top-up was reached, and cut
        r.run(Limits(max_experiments=2))
    kept = r.ledger.experiment(1)
    assert kept is not None and kept.verdict == "keep" and kept.kept_commit is not None
    assert r.experimenter.branch_head() == kept.kept_commit
    assert [run.kind for run in kept.runs if run.kind in ("holdout", "fresh")] == ["holdout"]  # cut before any
    cut[0] = False
    r.run(Limits(max_experiments=3))
    champion = r.ledger.experiment(1)
    assert champion is not None and sum(run.kind == "fresh" for run in champion.runs) == 5
    first_fresh = min(run.id for run in champion.runs if run.kind == "fresh")
    nxt = r.ledger.experiment(2)
    assert nxt is not None and nxt.state == "done" and all(run.id > first_fresh for run in nxt.runs)


# ---- paired seeds: when a seed moves every commit's metric alike, the judge compares runs on the same seeds
def test_the_standard_error_is_the_spread_of_the_difference_it_describes() -> None:
    """Metric = code + seed effect (variance 0.8) + the code's own noise (0.2): the spread of mean(n candidate
    runs) - mean(m champion runs) with `paired` seeds in common is what Noise.se says."""
    rng = random.Random(1)
    noise = Noise(sd=1.0, dof=1000, shared=0.8)
    for n, m, paired in ((1, 5, 1), (2, 5, 2), (4, 4, 4), (3, 6, 0), (1, 1, 1)):
        diffs = []
        for _ in range(20_000):
            seeds = [rng.gauss(0, 0.8**0.5) for _ in range(n + m - paired)]
            candidate = [seeds[i] + rng.gauss(0, 0.2**0.5) for i in range(n)]
            champion = [seeds[i] + rng.gauss(0, 0.2**0.5) for i in range(m)]
            champion[paired:] = [seeds[n + i] + rng.gauss(0, 0.2**0.5) for i in range(m - paired)]
            diffs.append(statistics.fmean(candidate) - statistics.fmean(champion))
        assert statistics.stdev(diffs) == pytest.approx(noise.se(n, m, paired), rel=0.04), (n, m, paired)
    assert Noise(1.0, 10).se(2, 4, 2) == pytest.approx((1 / 2 + 1 / 4) ** 0.5)  # nothing shared: unpaired
    assert Noise(1.0, 10, shared=0.8).pairs_better() and not Noise(1.0, 10, shared=0.4).pairs_better()


def _ledger_like(shared: float, experiments: int, rng: random.Random) -> tuple[dict[int, dict[int, float]], Noise]:
    """Experiments that each ran on 3 of their parent's seeds (their parent the one before), and the pooled
    noise their runs give."""
    effect = {s: rng.gauss(0, shared**0.5) for s in range(100)}
    seeded = {}
    for e in range(experiments):
        seeds = range(3 * (e // 2), 3 * (e // 2) + 3)  # an experiment and its child share their seeds
        seeded[e] = {s: e * 0.1 + effect[s] + rng.gauss(0, (1 - shared) ** 0.5) for s in seeds}
    within = [list(runs.values()) for runs in seeded.values()]
    sd = statistics.fmean(statistics.variance(w) for w in within) ** 0.5
    return seeded, Noise(sd, sum(len(w) - 1 for w in within))


def test_the_pair_pool_finds_a_seed_effect_cautiously_and_none_where_there_is_none() -> None:
    rng = random.Random(2)
    parents = {e: (e - 1 if e % 2 else None) for e in range(40)}
    found = []
    for _ in range(50):
        seeded, noise = _ledger_like(0.8, 40, rng)
        got = PairPool()(noise, seeded, parents)
        assert got is not None and got.dof <= noise.dof
        found.append(got.shared / noise.sd**2)
    assert 0.5 < statistics.fmean(found) < 0.8  # found, and below the truth: the unshared part is overstated
    zero = []
    for _ in range(200):
        seeded, noise = _ledger_like(0.0, 40, rng)
        got = PairPool()(noise, seeded, parents)
        assert got is not None
        zero.append(got.shared)
    assert sum(z > 0 for z in zero) <= 0.1 * len(zero) * 1.5  # claimed at most at 1 - SHARED_LEVEL, and small
    seeded, noise = _ledger_like(0.8, 3, rng)  # one pair of experiments: 2 degrees of freedom, not enough
    assert PairPool()(noise, seeded, parents) == noise


def test_nulls_are_kept_no_more_often_when_the_judge_pairs() -> None:
    """Screening then replication of null candidates under a strong seed effect, with the shared variance the
    judge was told: false keeps stay under 1 - confidence."""
    rng = random.Random(3)
    judge = SequentialJudge()
    noise = Noise(1.0, 200, shared=0.9)
    keeps = 0
    trials = 3000
    for _ in range(trials):
        effect = [rng.gauss(0, 0.9**0.5) for _ in range(20)]

        def run(seed: int, effect: list[float] = effect) -> float:
            return effect[seed] + rng.gauss(0, 0.1**0.5)

        champion = [run(s) for s in range(5)]
        candidate: list[float | None] = []
        while True:
            candidate.append(run(len(candidate)))
            decision = judge.decide(candidate, champion, "maximize", noise, paired=len(candidate))
            if decision.verdict != "more":
                break
        if decision.verdict == "keep":
            pairs: list[tuple[float, float]] = []
            while decision.verdict in ("keep", "more") and len(pairs) < judge.replicate:
                pairs.append((run(10 + len(pairs)), run(10 + len(pairs))))
                decision = judge.confirm([c for c, _ in pairs], [h for _, h in pairs], "maximize", noise)
                if decision.verdict != "more":
                    break
            keeps += decision.verdict == "keep"
    assert keeps / trials <= 1 - judge.confidence


def seeded_task(files: Mapping[str, str], seed: int) -> float:
    """A seed moves every commit's loss alike by sd 1; each commit's own noise on it has sd 0.05."""
    shared = random.Random(f"seed {seed}").gauss(0, 1.0)
    return value(files, "loss") + shared + random.Random(f"{seed}{files['f.py']}").gauss(0, 0.05)


def _research(monkeypatch: pytest.MonkeyPatch, pairing: bool) -> rsi.engine.Research:
    """Two large gains (kept, their replication pairs show how much of the noise the seed explains), four
    nulls, then a gain of 0.3."""
    if not pairing:
        monkeypatch.setattr(rsi.judge, "PAIRED_DOF", 10**9)
    nulls = [f"loss = -4.0\n# null {i}\n" for i in range(4)]
    texts = ["loss = -2.0\n", "loss = -4.0\n", *nulls, "loss = -4.3\n"]
    r = in_process(config(), {"f.py": "loss = 1.0\n"}, seeded_task, Scripted(texts))
    r.run(Limits(max_experiments=20))
    return r


def test_a_research_pairs_seeds_and_keeps_a_gain_hidden_in_the_seed_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gain of 0.3 is under a third of the spread between seeds but six times the spread on one seed: paired,
    the research keeps it and drops the nulls after one run each; unpaired (the estimate turned off), the
    same research spends more runs on the nulls and cannot tell the gain from them."""
    paired = _research(monkeypatch, pairing=True)
    noise = paired.experimenter.noise()
    assert noise is not None and noise.pairs_better() and noise.shared > 0.5 * noise.sd**2
    first, second, *nulls, gain = paired.ledger.experiments()[1:]
    assert first.verdict == second.verdict == "keep" and len(nulls) == 4
    assert all(e.verdict == "discard" for e in nulls)
    assert gain.verdict == "keep" and (gain.ci or (0.0, 0.0))[0] > 0
    monkeypatch.undo()
    unpaired = _research(monkeypatch, pairing=False)
    noise = unpaired.experimenter.noise()
    assert noise is not None and noise.shared == 0.0
    unpaired_nulls, unpaired_gain = unpaired.ledger.experiments()[3:7], unpaired.ledger.experiments()[7]
    assert unpaired_gain.verdict != "keep"
    assert all(e.verdict != "keep" for e in unpaired_nulls)
    assert sum(len(e.runs) for e in unpaired_nulls) > sum(len(e.runs) for e in nulls)

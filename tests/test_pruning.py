"""Early stopping: progress reports, the rule that stops a screening run, and a research that uses it."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import MakeTask, rsi

from rsi import pruning
from rsi.config import load_config
from rsi.engine import Research
from rsi.experiment import champion_pool
from rsi.judge import Judge, SequentialJudge, ThresholdJudge
from rsi.ledger import Ledger
from rsi.proposer import KnobsProposer, Proposer
from rsi.pruning import Reference, Watch, reference
from rsi.runner import MetricSpec, RunSpec, run
from rsi.store import Store

# a curve that falls toward its final value; lr and DEPTH set where it ends, so the ordering at any step is the
# ordering at the end, which lets the test know whether a pruned candidate could have won
CURVE = """\
import os, random, time
import rsi
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]))
final = (lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2
for step in range(1, 21):
    rsi.progress(step, final * (1 + 4 / step) + random.gauss(0, 0.01))
    time.sleep(0.03)
print(f"loss: {final + random.gauss(0, 0.01):.6f}")
"""


def final_loss(params: dict[str, float], lr: float, depth: float) -> float:
    lr, depth = params.get("lr", lr), params.get("DEPTH", depth)
    return (lr - 0.12) ** 2 * 10 + 0.1 * (depth - 7) ** 2


def flat(value: float, runs: int = 4, steps: int = 20) -> Reference:
    curves = [[(float(s), value + 0.01 * (r - (runs - 1) / 2)) for s in range(1, steps + 1)] for r in range(runs)]
    ref = reference(curves, "minimize", confidence=0.95, warmup=0.25, looks=4)
    assert ref is not None
    return ref


def spec(tmp_path: Path, body: str) -> RunSpec:
    (tmp_path / "task.py").write_text(textwrap.dedent(body))
    return RunSpec(
        command=f"{shlex.quote(sys.executable)} task.py",
        cwd=tmp_path,
        env=dict(os.environ),
        timeout_s=30,
        memory_bytes=None,
        output_cap=1_000_000,
        log_dir=tmp_path / "logs",
        metric=MetricSpec(pattern=r"^loss:\s*(\S+)"),
    )


def test_the_rule_needs_enough_runs_and_uses_the_noise_at_each_look() -> None:
    ref = flat(1.0)
    assert ref.steps() == [5.75, 9.3125, 12.875, 16.4375]  # from 25% of the way (step 1 to 20) to the end
    assert "behind the champion" in ref.behind(10.0, 1.5)
    assert ref.behind(10.0, 1.02) == ""  # within the champion's own spread
    assert ref.behind(25.0, 9.0) == ""  # past every champion run: nothing to compare with
    assert ref.behind(10.0, 0.5) == ""  # ahead
    up = Reference(ref.curves, "maximize")
    assert "behind" in up.behind(10.0, 0.5) and up.behind(10.0, 1.5) == ""
    assert reference([[(1.0, 1.0), (2.0, 1.0)]] * 2, "minimize", 0.95, 0.25, 4) is None  # two runs are too few
    # between reports the champion's value is interpolated
    slope = reference([[(0.0, 0.0 + d), (10.0, 10.0 + d)] for d in (0.0, 0.1, -0.1)], "minimize", 0.95, 0.0, 1)
    assert slope is not None and slope.behind(5.0, 5.2) == "" and slope.behind(5.0, 8.0) != ""
    # identical champion runs: any real gap is behind, an equal value is not
    same = reference([[(0.0, 1.0), (10.0, 1.0)]] * 3, "minimize", 0.95, 0.0, 1)
    assert same is not None and same.behind(5.0, 1.0) == "" and same.behind(5.0, 1.001) != ""
    # more looks, each held to a stricter interval: a value behind at one look is not at every one of 50
    many = Reference(ref.curves, "minimize", 0.95, 0.25, 50)
    assert flat(1.0).behind(10.0, 1.07) != "" and many.behind(10.0, 1.07) == ""


def test_the_shortfall_of_a_pruned_run_is_read_back_from_its_reason() -> None:
    """How far behind the champion's level a stopped run was, relative to that level, for the sampler to rank
    pruned points by; from the reason the rule wrote, either goal."""
    ref = flat(2.0)
    far, near = (pruning.shortfall(f"{pruning.PRUNED}: {ref.behind(10.0, v)}") for v in (3.0, 2.5))
    assert far == pytest.approx(0.5, rel=1e-3) and near == pytest.approx(0.25, rel=1e-3)
    up = Reference(ref.curves, "maximize")
    assert pruning.shortfall(up.behind(10.0, 1.0)) == pytest.approx(0.5, rel=1e-3)
    assert pruning.shortfall("improvement -0.02; even the optimistic bound 0.04 is too small") is None


def test_the_level_comes_from_the_unbiased_runs_and_the_spread_is_pooled_with_the_others() -> None:
    fresh = [[(float(s), 1.0 + d) for s in range(1, 11)] for d in (-0.01, 0.0, 0.01)]
    lucky = [[(float(s), 0.8 + d) for s in range(1, 11)] for d in (-0.01, 0.0, 0.01, 0.005, -0.005)]  # selected
    alone = reference(fresh, "minimize", 0.95, 0.0, 4)
    pooled = reference(fresh, "minimize", 0.95, 0.0, 4, lucky)
    assert alone is not None and pooled is not None
    assert alone.behind(5.0, 1.05) == ""  # three runs: a wide interval (t with 2 degrees of freedom)
    assert "behind" in pooled.behind(5.0, 1.05) and "8 runs" in pooled.behind(5.0, 1.05)
    assert pooled.behind(5.0, 0.9) == ""  # behind the lucky runs' mean, not the champion's level
    assert reference(fresh[:1], "minimize", 0.95, 0.0, 1, lucky) is None  # one run gives no level
    assert reference(fresh[:2], "minimize", 0.95, 0.0, 1, lucky[:1]) is None  # nor any spread to pool


def test_a_watch_looks_only_at_its_look_steps() -> None:
    watch = Watch(against=flat(1.0))
    watch.feed(b"".join(f"rsi-progress {s} 9\n".encode() for s in range(1, 6)), 0)
    assert not watch.stop.is_set()  # far behind, but before the first look (step 5.75)
    watch.feed(b"rsi-progress 6 1.0\nrsi-progress 7 9\nrsi-progress 8 9\n", 0)
    assert not watch.stop.is_set()  # on par at the first look; steps 7 and 8 are no look
    watch.feed(b"rsi-progress 13 9\n", 0)  # past the second and third look at once: one look, behind
    assert watch.stop.is_set() and watch.reason.startswith("pruned: at step 13 ")


def test_false_stops_of_a_run_no_worse_than_the_champion_stay_under_one_minus_confidence() -> None:
    """Runs drawn from the champion's own distribution, with reports that wander (a random walk around the
    final value), are stopped at most 1 - confidence of the time, however many reports they print."""
    import random

    rng = random.Random(7)

    def curve() -> list[tuple[float, float]]:
        level, walk = rng.gauss(1.0, 0.05), 0.0
        points = []
        for s in range(1, 201):
            walk = 0.9 * walk + rng.gauss(0, 0.01)
            points.append((float(s), level + walk))
        return points

    stopped, trials = 0, 400
    for _ in range(trials):
        ref = reference([curve() for _ in range(6)], "minimize", 0.95, 0.25, 4)
        assert ref is not None
        watch = Watch(against=ref)
        watch.feed(b"".join(f"rsi-progress {s} {v}\n".encode() for s, v in curve()), 0)
        stopped += watch.stop.is_set()
    assert stopped / trials <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5, stopped


def test_with_a_lead_runs_that_reach_it_are_spared_and_runs_on_par_are_stopped_more_often() -> None:
    """Held to the smallest detectable gain (`lead` spreads): a run that is in truth that much better than the
    champion is still stopped at most 1 - confidence of the time; one on par is now often stopped; one ahead
    of the champion's level never is, whichever the goal."""
    import random

    rng = random.Random(11)

    def curve(shift: float) -> list[tuple[float, float]]:
        return [(float(s), rng.gauss(1.0 - shift, 0.05)) for s in range(1, 41)]

    def stop_rate(shift: float, lead: float, trials: int = 400) -> float:
        stopped = 0
        for _ in range(trials):
            ref = reference([curve(0.0) for _ in range(6)], "minimize", 0.95, 0.25, 4, lead=lead)
            assert ref is not None
            watch = Watch(against=ref)
            watch.feed(b"".join(f"rsi-progress {s} {v}\n".encode() for s, v in curve(shift)), 0)
            stopped += watch.stop.is_set()
        return stopped / trials

    margin = 2 * (0.05 * 0.95 / 400) ** 0.5
    assert stop_rate(2 * 0.05, lead=2.0) <= 0.05 + margin  # a real gain of the lead: still spared
    on_par, par_rule = stop_rate(0.0, lead=2.0), stop_rate(0.0, lead=0.0)
    assert on_par > 0.3 and par_rule <= 0.05 + margin, (on_par, par_rule)
    far = Reference(flat(1.0).curves, "minimize", lead=50.0)  # a lead wider than the interval
    assert far.behind(10.0, 0.999) == "" and "by more than 0," in far.behind(10.0, 1.001)
    up = Reference(flat(1.0).curves, "maximize", lead=50.0)
    assert up.behind(10.0, 1.001) == "" and "by more than 0," in up.behind(10.0, 0.999)


def test_a_watch_reads_both_formats_split_across_chunks() -> None:
    watch = Watch(re.compile(rb"it (\d+) .*loss=(\S+)"))
    for chunk in (b"rsi-progress 1 0.5\nrsi-prog", b"ress 2 0.4\nnoise\nit 3 | loss=0.3\n", b"rsi-progress x y\n"):
        watch.feed(chunk, 0)
    watch.feed(b"rsi-progress 4 nan\nrsi-progress 5 0.1\n", 1)
    assert watch.points == [(1.0, 0.5), (2.0, 0.4), (3.0, 0.3), (5.0, 0.1)]
    many = Watch()
    many.feed(b"".join(f"rsi-progress {i} 1\n".encode() for i in range(10_000)), 0)
    assert 500 < len(many.points) <= 2000 and many.points[0] == (0.0, 1.0)  # thinned, in order


def test_a_run_clearly_behind_is_stopped_and_one_on_par_is_not(tmp_path: Path) -> None:
    body = """\
    import sys, time
    sys.path.insert(0, {src!r})
    import rsi
    for step in range(1, 21):
        rsi.progress(step, {value})
        time.sleep(0.1)
    print("loss: 1.0")
    """
    src = str(Path(pruning.__file__).parent.parent)  # where the rsi package is
    behind = Watch(against=flat(1.0))
    result = run(spec(tmp_path, body.format(src=src, value=1.5)), watch=behind)
    assert result.status == "pruned" and result.metric is None, result
    assert result.reason.startswith("pruned: at step 6 ") and "behind the champion" in result.reason
    assert len(result.progress) < 20  # stopped before its last report (and so before its metric)
    on_par = Watch(against=flat(1.0))
    result = run(spec(tmp_path, body.format(src=src, value=1.0)), watch=on_par)
    assert result.status == "ok" and result.metric == 1.0 and len(result.progress) == 20


@pytest.mark.slow
def test_a_research_prunes_candidates_that_could_not_have_won(make_task: MakeTask) -> None:
    toml = "[judge]\nbaseline_repeats = 4\n[pruning]\nenabled = true\n"
    root = make_task(train=CURVE, extra_toml=toml)
    done = rsi("run", str(root), "--max-experiments", "12", "--tag", "p")
    assert done.returncode == 0, done.stderr
    assert "warning: [pruning]" not in done.stdout
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = {e.id: e for e in ledger.experiments()}
    pruned = [e for e in exps.values() if e.reason.startswith("pruned:")]
    assert pruned, [(e.id, e.params, e.verdict, e.reason) for e in exps.values()]
    full = [r.duration_s or 0 for r in exps[0].runs if r.kind == "fresh"]
    for e in pruned:
        assert e.verdict == "discard" and e.status == "ok"
        last = e.runs[-1]
        assert last.status == "pruned" and (last.duration_s or 0) < min(full)
        champion = exps[e.parent or 0]
        here = final_loss(e.params, 0.5, 3)
        best = final_loss(champion.params, 0.5, 3) if champion.id else final_loss({}, 0.5, 3)
        assert here > best, (e.id, e.params, champion.id, champion.params)  # it could not have won
    fresh = [r for r in exps[0].runs if r.kind == "fresh" and r.status == "ok"]
    assert len(ledger.trajectories(0, ("fresh",))) == len(fresh) >= 4  # every run's progress is recorded
    status = json.loads(rsi("status", str(root), "--json").stdout)
    shown = {x["id"]: x for x in status["experiments"]}
    assert all(shown[e.id]["status"] == "ok" and shown[e.id]["verdict"] == "discard" for e in pruned)
    # killed after its pruned run was recorded, before its verdict: resumed, it is still pruned, not "failed"
    victim = pruned[-1]
    ledger.close()
    writable = Ledger(root / ".rsi" / "ledger.sqlite")
    writable.update_experiment(victim.id, state="running", status=None, verdict=None, reason="")
    writable.close()
    again = rsi("run", str(root), "--max-experiments", "12", "--tag", "p")
    assert again.returncode == 0, again.stderr
    resumed = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiment(victim.id)
    assert resumed is not None and resumed.state == "done" and resumed.verdict == "discard"
    assert resumed.status == "ok" and resumed.reason == victim.reason and len(resumed.runs) == len(victim.runs)


def test_pruning_that_cannot_stop_anything_is_said(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[pruning]\nenabled = true\n")
    done = rsi("run", str(root), "--max-experiments", "1")
    assert done.returncode == 0, done.stderr
    said = "warning: [pruning] is on, but no run of the champion reported progress (rsi.progress(step, value); "
    assert said + "no progress_pattern is set): no run is stopped early" in done.stdout
    toml = (root / "rsi.toml").read_text().replace("[metric]\n", "[metric]\nprogress_pattern = 'step (\\d+) (\\S+)'\n")
    (root / "rsi.toml").write_text(toml)  # a pattern the task's output never matches
    again = rsi("run", str(root), "--max-experiments", "2")
    assert again.returncode == 0, again.stderr
    assert said + "lines matching [metric] progress_pattern step (\\d+) (\\S+))" in again.stdout


def test_a_progress_pattern_needs_two_groups(make_task: MakeTask) -> None:
    root = make_task(extra_toml="")
    toml = (root / "rsi.toml").read_text().replace("[metric]\n", "[metric]\nprogress_pattern = 'step (\\d+)'\n")
    (root / "rsi.toml").write_text(toml)
    failed = rsi("run", str(root), "--max-experiments", "1")
    assert failed.returncode == 2 and "two groups" in failed.stderr and "Traceback" not in failed.stderr


def test_the_experimenter_holds_each_candidate_to_the_gain_its_own_judge_keeps(make_task: MakeTask) -> None:
    toml = "[judge]\nbaseline_repeats = 4\n[pruning]\nenabled = true\n"
    root = make_task(train=CURVE, extra_toml=toml)
    done = rsi("run", str(root), "--max-experiments", "1", "--tag", "p")  # the baseline's runs and progress
    assert done.returncode == 0, done.stderr

    cfg = load_config(root)

    def knobs(store: Store, start: str) -> Proposer:  # built by the engine, asked for nothing here
        files = {p: store.read(start, p) for p in store.files(start, cfg.task.editable)}
        return KnobsProposer(files, cfg.knobs, cfg.metric.goal, seed=0)

    refs: dict[tuple[str, str], Reference] = {}
    for spare in ("detectable", "par"):
        rule = cfg.pruning.model_copy(update={"spare": spare})
        engine = Research(root, cfg.model_copy(update={"pruning": rule}), knobs)
        try:
            ex = engine.experimenter
            champion, noise = ex.champion(), ex.noise()
            assert noise is not None and noise.sd > 0
            n = len(champion_pool(champion))
            judge = engine.judge
            assert isinstance(judge, SequentialJudge) and judge.simplicity
            cases: dict[str, tuple[Judge, bool]] = {
                "change": (judge, False),
                "deletion": (judge, True),
                "retest --repeats 2": (judge.with_repeats(2), False),
                "threshold judge": (ThresholdJudge(), False),
            }
            for name, (j, deletes) in cases.items():
                ref = ex.reference(champion, j, deletes)
                assert ref is not None
                refs[spare, name] = ref
                expected = (j.detectable(n, noise, deletes) or 0.0) / noise.sd if spare == "detectable" else 0.0
                assert abs(ref.lead - expected) < 1e-12, (spare, name, ref.lead, expected)
        finally:
            engine.ledger.close()
            engine.store.close()
    lead = {name: refs["detectable", name].lead for _, name in refs}
    assert all(refs["par", name].lead == 0.0 for _, name in refs)
    # a change must show a gain, a larger one with fewer runs (a retest with 2); a deletion is kept on par or
    # up to about one sd worse (the simplicity rule), so it is never held above the champion's level
    assert lead["retest --repeats 2"] > lead["change"] > 0.0 >= lead["deletion"] and lead["threshold judge"] == 0.0

    def first_stopped(ref: Reference) -> float:
        """The best value (a loss: the lowest) that is stopped at the last look."""
        at = ref.steps()[-1]
        grid = [3.0 + i * 0.0005 for i in range(4000)]
        return next(v for v in grid if ref.behind(at, v))

    # what that means for a run: the farther behind a run must be to be stopped, the more the rule spares
    stops = {key: first_stopped(ref) for key, ref in refs.items()}
    assert stops["detectable", "retest --repeats 2"] <= stops["detectable", "change"] < stops["par", "change"]
    assert stops["detectable", "change"] < stops["par", "deletion"] <= stops["detectable", "deletion"]
    assert stops["par", "change"] == stops["par", "deletion"] == stops["detectable", "threshold judge"]

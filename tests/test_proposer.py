"""The knobs proposer: a sampler's ask-and-tell against the current champion, failures told, resumable."""

from __future__ import annotations

import ast
import dataclasses
import random
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cmaes
import numpy as np
import optuna
import pytest

from rsi.cli import make_proposer
from rsi.config import KnobsConfig, load_config
from rsi.knobs import format_value
from rsi.ledger import Experiment, Ledger, Run
from rsi.proposer import Context, KnobsProposer, _near
from rsi.sampler import CmaSampler, Point, State

SOURCE = "lr = 0.5  # the step\nDEPTH = 3\nuse_bias = False\nprint('x')\n"


def experiment(exp_id: int, params: dict[str, object], metric: float | None, status: str = "ok") -> Experiment:
    run = Run(exp_id, exp_id, "screen", 1, "done", status, metric, "", 0.1, 1.0, "", "")
    return Experiment(
        id=exp_id, parent=0, parent_commit=None, commit_sha=None, kept_commit=None,
        proposer="knobs" if exp_id else "baseline", hypothesis="h", params=dict(params), diff="", state="done",
        status=status, verdict="discard", reason="", interrupts=0, reverted=False, ci=None, created=time.time(),
        finished=time.time(), runs=[run],
    )  # fmt: skip


def values(text: str) -> dict[str, object]:
    tree = ast.parse(text)
    return {s.targets[0].id: ast.literal_eval(s.value) for s in tree.body if isinstance(s, ast.Assign)}  # type: ignore[attr-defined]


@pytest.fixture
def ledger(tmp_path):  # type: ignore[no-untyped-def]
    return Ledger(tmp_path / "l.sqlite")


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_proposals_change_at_most_per_candidate_knobs_of_the_champion(sampler: str, ledger: Ledger) -> None:
    p = KnobsProposer(
        {"train.py": SOURCE}, KnobsConfig.model_validate({"sampler": sampler, "per_candidate": 1}), "minimize", seed=3
    )
    assert set(p.knobs) == {"lr", "DEPTH", "use_bias"}
    told: list[str] = []
    values_told: list[float | None] = []
    tell, add = p.sampler.tell, p.sampler.add

    def spy_tell(point: Point, value: float | None, state: State) -> None:
        told.append(state)
        values_told.append(value)
        tell(point, value, state)

    def spy_add(params: Mapping[str, Any], value: float | None, state: State) -> None:
        told.append(state)
        add(params, value, state)

    p.sampler.tell = spy_tell  # type: ignore[method-assign]
    p.sampler.add = spy_add  # type: ignore[method-assign]
    base = experiment(0, {}, 1.0)
    p.observe(base)
    champion_text = SOURCE.replace("DEPTH = 3", "DEPTH = 5")
    seen = set()
    for i in range(12):
        prop = p.propose(Context(base, {"train.py": champion_text}, ledger))
        assert prop is not None
        new = values(prop.edits["train.py"])
        old = values(champion_text)
        changed = [k for k in old if new[k] != old[k]]
        assert len(changed) == 1, prop.hypothesis
        assert prop.hypothesis.startswith(f"{changed[0]} ")
        lines = prop.edits["train.py"].splitlines()
        assert lines[0].endswith("  # the step") and lines[3] == "print('x')"  # only literals change
        signature = tuple(sorted(prop.params.items()))
        assert signature not in seen  # never the same candidate twice
        seen.add(signature)
        p.observe(experiment(i + 1, prop.params, None if i % 3 == 0 else float(i), "ok" if i % 3 else "crash"))
    assert told.count("fail") == 4 and told.count("complete") == 9  # the baseline and every run that measured
    prop = p.propose(Context(base, {"train.py": champion_text}, ledger))
    assert prop is not None
    why = "pruned: at step 3.8 its value 2.4 is behind the champion's 2 (by more than 0.1, 4 runs)"
    p.observe(dataclasses.replace(experiment(13, prop.params, None), reason=why))
    assert told[-1] == "pruned" and values_told[-1] == pytest.approx(0.2)  # how far behind, for the ranking


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_the_sampler_moves_towards_better_values(sampler: str, ledger: Ledger) -> None:
    src = "x = 1.0\ny = 1.0\n"
    cfg = KnobsConfig.model_validate({"sampler": sampler, "per_candidate": 2, "local": 0.0, "restart_after": 0})
    p = KnobsProposer({"f.py": src}, cfg, "minimize", seed=0)
    best = None
    base = experiment(0, {}, 100.0)
    p.observe(base)
    for i in range(60):
        prop = p.propose(Context(base, {"f.py": src}, ledger))
        assert prop is not None
        v = values(prop.edits["f.py"])
        loss = (v["x"] - 4.2) ** 2 + (v["y"] - 0.3) ** 2  # type: ignore[operator]
        best = loss if best is None else min(best, loss)
        p.observe(experiment(i + 1, prop.params, loss))
    assert best is not None and best < 0.3


def test_knobs_named_alike_in_two_files_keep_their_own_values() -> None:
    """The first file (in path order) names a knob, another file's knob of that name is `path:name`: the
    champion's current values are read by the same rule (they were read in a set's order of the files, which
    differs between processes)."""
    start = {"b.py": "lr = 0.5\n", "a.py": "lr = 0.01\nwidth = 32\n", "notes.txt": "lr = 9\n"}
    p = KnobsProposer(start, KnobsConfig(), "minimize")
    assert {key: k.value for key, k in p.knobs.items()} == {"lr": 0.01, "width": 32, "b.py:lr": 0.5}
    now = {"a.py": "lr = 0.02\nwidth = 64\n", "b.py": "lr = 0.25\n"}
    assert p.values(now) == {"lr": 0.02, "width": 64, "b.py:lr": 0.25}  # (it failed in about half of processes)
    assert p.values({"b.py": "lr = 0.25\n"}) == {"lr": 0.01, "width": 32, "b.py:lr": 0.25}  # gone: as it began


def test_resume_rebuilds_the_study_from_the_ledger(ledger: Ledger) -> None:
    cfg = KnobsConfig(sampler="tpe", per_candidate=2)
    first = KnobsProposer({"train.py": SOURCE}, cfg, "minimize")
    history = [experiment(0, {}, 1.0)]
    first.observe(history[0])
    for i in range(5):
        prop = first.propose(Context(history[0], {"train.py": SOURCE}, ledger))
        assert prop is not None
        history.append(experiment(i + 1, prop.params, float(i)))
        first.observe(history[-1])
    again = KnobsProposer({"train.py": SOURCE}, cfg, "minimize")
    for e in history:
        again.observe(e)
    # the live study holds Optuna's raw values; the ledger (and so a resumed study) what the file said
    rounded = [
        {k: ast.literal_eval(format_value(v)) for k, v in t.params.items()}
        for t in first.sampler.study.trials  # type: ignore[attr-defined]
        if t.state.name != "PRUNED"
    ]
    assert [t.params for t in again.sampler.study.trials] == rounded  # type: ignore[attr-defined]
    assert again.tried == first.tried


def test_no_knobs_means_no_proposal(ledger: Ledger) -> None:
    p = KnobsProposer({"train.py": "print('loss: 1')\n"}, KnobsConfig(), "minimize")
    assert p.propose(Context(experiment(0, {}, 1.0), {"train.py": "print('loss: 1')\n"}, ledger)) is None


def test_the_seed_in_rsi_toml_gives_another_sequence_of_candidates(ledger: Ledger, tmp_path: Path) -> None:
    """`[knobs] seed`: replicate researches of one task try other candidates; the same seed the same ones."""

    class Start:  # the start commit, as make_proposer reads it
        def files(self, commit: str, globs: object) -> list[str]:
            return ["train.py"]

        def read(self, commit: str, path: str) -> str:
            return SOURCE

    def first_three(seed: int) -> list[dict[str, object]]:
        (tmp_path / "rsi.toml").write_text(f"{TOML}\n[knobs]\nseed = {seed}\n")
        cfg = load_config(tmp_path)
        p = make_proposer(cfg, "knobs")(Start(), "start")  # type: ignore[arg-type]
        base = experiment(0, {}, 1.0)
        p.observe(base)
        found = []
        for _ in range(3):
            prop = p.propose(Context(base, {"train.py": SOURCE}, ledger))
            assert prop is not None
            found.append(prop.params)
        return found

    assert first_three(0) == first_three(0) != first_three(1)


TOML = """
[task]
name = "t"
editable = ["train.py"]
command = "python train.py"

[metric]
name = "loss"
goal = "minimize"
pattern = '^loss: (\\S+)$'
"""


def record_generations(s: CmaSampler) -> list[list[tuple[np.ndarray, float]]]:
    """Every generation `s` tells CMA-ES from now on, as told (the solutions and their values)."""
    assert s.cma is not None
    told: list[list[tuple[np.ndarray, float]]] = []
    real_tell = s.cma.tell

    def recording(solutions: list[tuple[np.ndarray, float]]) -> None:
        told.append(list(solutions))
        real_tell(solutions)

    s.cma.tell = recording
    return told


def test_cma_es_tells_a_generation_once_its_population_is_complete() -> None:
    """Pruned and failed points are solutions ranked below every complete one, failures last; a point of a
    generation already told is not told again."""
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "n": optuna.distributions.IntDistribution(1, 8),
        "act": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
    }
    fresh = CmaSampler(dists, "minimize", seed=0)
    drawn = [fresh.ask({}).params for _ in range(1000)]  # before any outcome: uniform over the box
    assert list(drawn[0]) == list(dists)  # in the knobs' order (the hypothesis names them so)
    assert {p["n"] for p in drawn} == set(range(1, 9)) and {p["act"] for p in drawn} == {"relu", "gelu"}
    ends = [sum(p["n"] == n for p in drawn) for n in (1, 8)]
    assert min(ends) > 98  # an eighth each (125): the ends get a whole step, not half of one (71)
    assert all(1e-4 <= p["lr"] <= 1e-1 for p in drawn)
    assert 0.28 < sum(p["lr"] < 1e-3 for p in drawn) / len(drawn) < 0.39  # a third: log-uniform
    s = CmaSampler(dists, "maximize", seed=0)
    s.add({"lr": 1e-2, "n": 4, "act": "relu"}, 1.0, "complete")  # the baseline: CMA-ES proposes from now on
    assert s.cma is not None
    size = s.cma.population_size
    points = [s.ask({"act": "gelu"}) for _ in range(size + 2)]
    assert all(p.params["act"] == "gelu" and p.handle == 0 for p in points)
    s.tell(points[0], None, "fail")
    s.tell(points[1], None, "pruned")
    assert len(s.solutions) == 2
    for p in points[2 : size - 1]:
        s.tell(p, 0.5, "complete")
    assert s.cma.generation == 0 and len(s.solutions) == size - 1
    told = record_generations(s)
    s.tell(points[size - 1], 2.0, "complete")
    assert s.cma.generation == 1 and s.solutions == []
    values = [v for _, v in told[0]]  # signed: maximized
    assert values[0] > values[1] > max(values[2:]) > -1.0  # the pruned below every complete one, the failure last
    s.tell(points[size], 3.0, "complete")  # finished late: its generation was told without it
    assert s.solutions == [] and s.ask({}).handle == 1
    for _ in range(3):  # a research that prunes all but one point of each generation still moves on
        generation = s.cma.generation
        batch = [s.ask({}) for _ in range(size)]
        s.tell(batch[0], 1.5, "complete")
        for p in batch[1:]:
            s.tell(p, None, "pruned")
        assert s.cma.generation == generation + 1
    assert s.ask({"lr": 1e-2, "n": 4, "act": "relu"}).handle is None  # a step near the champion: not CMA-ES's


def lr_and_n() -> dict[str, optuna.distributions.BaseDistribution]:
    """A log learning rate and an integer: the two knobs of the CMA-ES ranking tests."""
    return {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "n": optuna.distributions.IntDistribution(1, 8),
    }


def test_cma_es_ranks_pruned_points_by_how_far_behind_they_were() -> None:
    """Where nearly every point is pruned, CMA-ES still learns: pruned points rank by their shortfall (an
    unknown one last), and its mean moves towards those stopped nearest the champion's level. Tied, as they
    were, a generation of pruned points was ranked by chance."""
    dists = lr_and_n()
    s = CmaSampler(dists, "minimize", seed=0)
    s.add({"lr": 1e-2, "n": 4}, 1.0, "complete")
    assert s.cma is not None
    told = record_generations(s)
    for _ in range(8):
        batch = [s.ask({}) for _ in range(s.cma.population_size)]
        s.tell(batch[0], None, "pruned")  # a shortfall not known: last
        for p in batch[1:]:
            s.tell(p, 0.01 + s._unit(p.params)[0], "pruned")  # the smaller the learning rate, the nearer
    first = told[0]
    ranked = sorted(range(1, len(first)), key=lambda i: first[i][0][0])
    assert [first[i][1] for i in ranked] == sorted(first[i][1] for i in ranked)  # nearer ranks first
    assert all(v > 1.0 for _, v in first) and first[0][1] == max(v for _, v in first)
    assert s.cma.mean[0] < 0.2  # from the middle (0.5) towards the small learning rates


def test_cma_es_learns_to_leave_a_region_where_runs_fail() -> None:
    """Where large learning rates crash (NaN, out of memory), CMA-ES is told so: a failure ranks below every
    other outcome, a generation is told once it has its population whatever became of its points, and the search
    moves away from the failing region. Left out, failures kept a generation open for many times its size."""
    dists = lr_and_n()
    s = CmaSampler(dists, "minimize", seed=1)
    s.add({"lr": 1e-3, "n": 4}, 1.0, "complete")
    assert s.cma is not None
    runs = 0
    for generation in range(6):
        assert s.cma.generation == generation
        for _ in range(s.cma.population_size):
            p = s.ask({})
            runs += 1
            if s._unit(p.params)[0] > 0.4:
                s.tell(p, None, "fail")
            else:
                s.tell(p, 1.0 + 0.01 * s._unit(p.params)[1], "complete")  # the rest alike, but for n
    assert runs == 6 * s.cma.population_size and s.cma.generation == 6
    assert s.cma.mean[0] < 0.3  # from the middle (0.5) to where runs complete
    everything_fails = [s.ask({}) for _ in range(s.cma.population_size)]
    for p in everything_fails:
        s.tell(p, None, "fail")
    assert s.cma.generation == 7  # still moves on


def test_cma_es_with_scouts_starts_around_the_best_of_the_middle_and_random_points() -> None:
    """A range rsi derived around the file's value has that value as its middle, and the optimum may be near an
    edge: scouting tries the middle first, then random points, and CMA-ES starts around the best of them.
    Every outcome that took a run counts (a research that prunes most scouts must not scout for ever)."""
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "n": optuna.distributions.IntDistribution(1, 8),
        "act": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
    }
    s = CmaSampler(dists, "minimize", seed=3, scouts=5)
    s.add({"lr": 1e-3, "n": 4, "act": "relu"}, 5.0, "complete")  # the baseline is the first scout
    only_act = s.ask({"lr": 2e-3, "n": 2})  # no numeric knob free: this is not the middle's turn
    assert only_act.params["lr"] == 2e-3 and only_act.handle is None
    middle = s.ask({"act": "gelu"})
    assert middle.params["lr"] == pytest.approx(1e-3) and middle.params["n"] in (4, 5) and middle.handle is None
    scouts = [s.ask({"act": "gelu"}) for _ in range(3)]
    assert len({p.params["lr"] for p in scouts}) == 3 and all(p.handle is None for p in scouts)
    s.tell(only_act, None, "skipped")  # given back unrun (a duplicate): no scout
    s.tell(middle, 4.0, "complete")
    s.tell(scouts[0], None, "fail")  # a failed or pruned run counts, but cannot be the best
    s.tell(scouts[1], None, "pruned")
    assert s.cma is None and s.scouted == 4
    s.tell(scouts[2], 1.0, "complete")
    assert s.cma is not None and s.cma.generation == 0
    start = np.clip(s._unit(scouts[2].params), 0.05, 0.95)  # the best of the complete ones
    assert np.allclose(s.cma.mean, start)
    drawn = [s.ask({}) for _ in range(s.cma.population_size)]
    assert all(p.handle == 0 for p in drawn)
    near = statistics.fmean(abs(s._unit(p.params)[0] - start[0]) for p in drawn)
    assert near < 0.3  # its first generation lies around that start (a step of a sixth of the box)
    s.tell(scouts[0], 0.5, "complete")  # a scout that finishes late is not a solution of a generation
    assert s.solutions == []
    failing = CmaSampler(dists, "minimize", seed=3, scouts=2)  # no complete scout: the middle
    failing.add({"lr": 5.0, "n": 4, "act": "relu"}, None, "fail")
    failing.tell(failing.ask({}), None, "pruned")
    assert failing.cma is not None and np.allclose(failing.cma.mean, 0.5) and failing.ask({}).handle == 0
    for p in [failing.ask({}) for _ in range(failing.cma.population_size)]:
        failing.tell(p, None, "pruned")  # no complete outcome yet to rank them below: they tie
    assert failing.cma.generation == 1
    odd = CmaSampler(dists, "minimize", seed=3, scouts=2)  # a resumed value that no longer fits its knob
    odd.add({"lr": "fast", "n": 4, "act": "relu"}, 1.0, "complete")
    assert odd.scouted == 1 and odd.best is None
    without = CmaSampler(dists, "minimize", seed=3)
    without.add({"lr": 1e-3, "n": 4, "act": "relu"}, 5.0, "complete")
    assert without.cma is not None and np.allclose(without.cma.mean, 0.5)  # no scouts: the middle of the box


def test_cma_es_learns_which_choices_of_categorical_knobs_are_good() -> None:
    """Categorical knobs are searched with the numbers (CatCMA): where the good numbers need the right three
    switches, most later candidates have them. Drawn uniformly, as they were, one candidate in twelve did, and
    a research spent most of its runs on switches already known to be wrong. With one numeric knob (CatCMA needs
    two) they are still drawn uniformly."""
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "n": optuna.distributions.IntDistribution(1, 8),
        "scale": optuna.distributions.CategoricalDistribution([True, False]),
        "whiten": optuna.distributions.CategoricalDistribution([True, False]),
        "act": optuna.distributions.CategoricalDistribution(["relu", "gelu", "tanh"]),
    }

    def loss(p: Mapping[str, Any]) -> float:
        wrong = (p["scale"] is not False) + (p["whiten"] is not True) + (p["act"] != "tanh")
        return float((np.log10(p["lr"]) + 2.5) ** 2 + 0.01 * (p["n"] - 5) ** 2 + wrong)

    def right(p: Mapping[str, Any]) -> bool:
        return p["scale"] is False and p["whiten"] is True and p["act"] == "tanh"

    baseline = {"lr": 1e-3, "n": 4, "scale": True, "whiten": False, "act": "relu"}
    for seed in range(4):
        s = CmaSampler(dists, "minimize", seed=seed, scouts=5)
        s.add(baseline, loss(baseline), "complete")
        late = []
        for i in range(80):
            p = s.ask({})
            if s.cma is not None and i == 4:  # CMA-ES has just started, leaning to the best scout's choices
                assert isinstance(s.cma, cmaes.CatCMA)
                q = s._leaning()
                assert sorted(q[0][:2]) == pytest.approx([1 / 3, 2 / 3])  # rows padded to the most choices
                assert sorted(q[2]) == pytest.approx([0.25, 0.25, 0.5])
            if i >= 40:
                late.append(right(p.params))
            s.tell(p, loss(p.params), "complete")
        assert s.cma is not None and s.cma.generation >= 8
        assert sum(late) >= 20, f"seed {seed}: {sum(late)} of 40 late candidates had the right switches"
    fixed = CmaSampler(dists, "minimize", seed=0, scouts=0)  # a fixed choice is what is told
    fixed.add(baseline, loss(baseline), "complete")
    point = fixed.ask({"act": "gelu"})
    assert point.params["act"] == "gelu" and point.handle == 0
    fixed.tell(point, loss(point.params), "complete")
    assert len(fixed.solutions) == 1 and fixed.solutions[0][0][1][2].tolist() == [0.0, 1.0, 0.0]
    one = CmaSampler({k: dists[k] for k in ("lr", "act")}, "minimize", seed=0)
    one.add({"lr": 1e-3, "act": "relu"}, 1.0, "complete")
    assert isinstance(one.cma, cmaes.CMA) and not isinstance(one.cma, cmaes.CatCMA)
    drawn = [one.ask({}).params["act"] for _ in range(600)]
    assert all(150 < drawn.count(c) < 250 for c in ("relu", "gelu", "tanh"))  # uniform: 200 each


def test_a_step_near_the_champion_changes_a_switch_now_and_then() -> None:
    """A step near the champion moves a categorical knob to another choice with probability `scale` (a fifth
    at the default), not always: three switches all flipped at once were no step near anything."""
    dist = optuna.distributions.CategoricalDistribution([True, False])
    rng = random.Random(0)
    flipped = sum(_near(True, dist, 0.2, rng) is False for _ in range(2000))
    assert 300 < flipped < 500  # 400 expected
    assert _near("only", optuna.distributions.CategoricalDistribution(["only"]), 1.0, rng) == "only"


def test_the_middle_scout_of_ranges_derived_around_the_file_is_the_file() -> None:
    """rsi derives a log range around an integer's value (a factor of four either way) and one around a
    float's (ten): the middle scout of such knobs proposes the file's values, a duplicate the proposer gives back
    unrun, rather than 15 for 16 (an integer box is widened by half a step at each end, unevenly in log space)."""
    dists = {
        "head_dim": optuna.distributions.IntDistribution(4, 64, log=True),
        "block": optuna.distributions.IntDistribution(16, 256, log=True),
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
        "layers": optuna.distributions.IntDistribution(1, 9),
    }
    s = CmaSampler(dists, "minimize", seed=3, scouts=4)
    assert s.ask({}).params == {"head_dim": 16, "block": 64, "lr": pytest.approx(1e-4), "layers": 5}
    assert s.ask({}).params != {"head_dim": 16, "block": 64, "lr": pytest.approx(1e-4), "layers": 5}


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_cma_es_moves_towards_the_better_end(goal: str) -> None:
    s = CmaSampler({"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, goal, seed=1)  # type: ignore[arg-type]
    s.add({"x": 0.5}, 0.5, "complete")
    for _ in range(40):
        point = s.ask({})
        s.tell(point, point.params["x"], "complete")
    last = statistics.fmean(s.ask({}).params["x"] for _ in range(20))
    assert (last > 0.8) if goal == "maximize" else (last < 0.2)

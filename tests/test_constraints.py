"""`[[constraints]]`: a candidate that breaks a bound on a secondary figure is not kept, whatever its metric."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import MakeTask, rsi

from rsi.ledger import Ledger

LATENCY = """\
import os, random
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
print(f"latency: {DEPTH * 10 + random.gauss(0, 0.1):.3f}")
"""


def test_a_gain_that_breaks_a_constraint_is_not_kept(make_task: MakeTask) -> None:
    """Deeper is better for the loss (best at DEPTH 7) but slower: latency at most 45 allows DEPTH 4 at most."""
    toml = "[[constraints]]\nname = 'latency'\npattern = '^latency:\\s*(\\S+)'\nmax = 45\n"
    root = make_task(train=LATENCY, extra_toml=toml)
    done = rsi("run", str(root), "--max-experiments", "25", "--tag", "c")
    assert done.returncode == 0, done.stderr
    exps = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    kept = [e for e in exps if e.verdict == "keep"]
    broke = [e for e in exps if e.reason.startswith("breaks constraint latency")]
    assert broke, [(e.id, e.hypothesis, e.verdict, e.reason) for e in exps]
    assert all(e.verdict == "discard" for e in broke)
    final = subprocess.run(["git", "show", "rsi/c:train.py"], cwd=root, capture_output=True, text=True, check=True)
    depth = int(re.search(r"^DEPTH = (\d+)", final.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert depth * 10 <= 45
    for e in kept:
        assert "DEPTH" not in e.params or e.params["DEPTH"] * 10 <= 45


def test_a_constraint_on_a_recorded_figure_and_bad_constraints(make_task: MakeTask) -> None:
    root = make_task(extra_toml='[[constraints]]\nname = "memory"\nsource = "peak_memory_mb"\nmax = 0.001\n')
    done = rsi("run", str(root), "--max-experiments", "12")
    assert done.returncode == 0, done.stderr
    exps = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    assert not [e for e in exps if e.verdict == "keep"]  # no run fits in a kilobyte
    assert any(e.reason.startswith("breaks constraint memory") for e in exps)
    for bad, words in (
        ('name = "x"\nmax = 1\n', "give one of source or pattern"),
        ('name = "x"\nsource = "peak_memory_mb"\n', "give max, min or both"),
        ('name = "x"\nsource = "gpu_hours"\nmax = 1\n', "constraints"),
    ):
        other = make_task(name=f"bad{len(bad)}", extra_toml="[[constraints]]\n" + bad)
        failed = rsi("run", str(other), "--max-experiments", "2")
        assert failed.returncode == 2 and words in failed.stderr and "Traceback" not in failed.stderr, failed.stderr


def test_status_and_report_show_the_pareto_front(make_task: MakeTask) -> None:
    toml = "[[constraints]]\nname = 'latency'\npattern = '^latency:\\s*(\\S+)'\nmax = 45\n"
    root = make_task(train=LATENCY, extra_toml=toml)
    assert rsi("run", str(root), "--max-experiments", "10").returncode == 0
    status = json.loads(rsi("status", str(root), "--json").stdout)
    (front,) = status["pareto"]
    points = {p["id"]: p for p in front["points"]}
    assert front["name"] == "latency" and front["front"] and set(front["front"]) <= set(points)
    for i in front["front"]:  # nothing beats a front point on both the loss and the latency
        a = points[i]
        same = (a["metric"], a["value"])
        assert not any(
            b["metric"] <= a["metric"] and b["value"] <= a["value"] and (b["metric"], b["value"]) != same
            for b in points.values()
        )
    for i in set(points) - set(front["front"]):  # and something beats every other point
        a = points[i]
        assert any(b["metric"] <= a["metric"] and b["value"] <= a["value"] for j, b in points.items() if j != i)
    shown = rsi("status", str(root)).stdout
    assert "Pareto front, loss / latency: #" in shown
    assert rsi("report", str(root)).returncode == 0
    assert "Pareto front: loss against latency" in (root / ".rsi" / "report.html").read_text()


PURE_NOISE = """\
import os, random
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]) * 7 + int(lr * 1000) + DEPTH)
print(f"loss: {random.gauss(1.0, 0.05):.6f}")
"""


def test_a_plateau_ends_the_research_and_says_so(make_task: MakeTask) -> None:
    """On pure noise the plateau rule stops the research after 4 experiments without a keep. A keep there is a
    false one (about 0.2% of null candidates; their rate is test_engine's business): it restarts the count."""
    root = make_task(train=PURE_NOISE, extra_toml="[plateau]\nexperiments = 4\n")
    done = rsi("run", str(root), "--max-experiments", "30")
    assert done.returncode == 0, done.stderr
    exps = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    last = max(e.id for e in exps if e.verdict == "keep" or e.id == 0)
    assert len(exps) == last + 5 < 30  # up to the last keep (or the baseline), then four without one
    assert f"plateau: 4 experiments since the last keep (#{last})" in done.stdout + done.stderr
    bad = make_task(name="bad", extra_toml='[plateau]\ntime = "soon"\n')
    failed = rsi("run", str(bad), "--max-experiments", "2")
    assert failed.returncode == 2 and "plateau" in failed.stderr and "Traceback" not in failed.stderr


def test_a_keep_starts_the_plateau_count_again(make_task: MakeTask) -> None:
    """On a task with real gains, the count of experiments without a keep starts from the last keep."""
    root = make_task(extra_toml="[plateau]\nexperiments = 3\n")  # a quadratic with little noise: keeps early
    done = rsi("run", str(root), "--max-experiments", "40")
    assert done.returncode == 0, done.stderr
    exps = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiments()
    keeps = [e.id for e in exps if e.verdict == "keep"]
    assert keeps, "the task was meant to have gains"
    assert len(exps) == keeps[-1] + 4 < 40  # the last keep, then three without one
    assert f"plateau: 3 experiments since the last keep (#{keeps[-1]})" in done.stdout + done.stderr


def test_a_bound_the_baseline_already_breaks_is_warned_about_at_the_start(make_task: MakeTask) -> None:
    toml = "[[constraints]]\nname = 'latency'\npattern = '^latency:\\s*(\\S+)'\nmax = 5\n"  # the baseline has 30
    root = make_task(train=LATENCY, extra_toml=toml)
    done = rsi("run", str(root), "--max-experiments", "3")
    assert done.returncode == 0, done.stderr
    assert "warning: the baseline breaks constraint latency: 30" in done.stdout, done.stdout
    assert "> max 5: a candidate is kept only within every [[constraints]] bound" in done.stdout
    fine = make_task(train=LATENCY, extra_toml=toml.replace("max = 5", "max = 45"), name="fine")
    quiet = rsi("run", str(fine), "--max-experiments", "2")
    assert quiet.returncode == 0 and "constraint" not in quiet.stdout, quiet.stdout


def test_a_constraint_or_holdout_whose_pattern_the_baseline_never_matches_is_said_at_once(make_task: MakeTask) -> None:
    """A constraint the baseline reports nothing for would discard every candidate: refused after the baseline,
    and again on resume until rsi.toml is fixed. A holdout that gives no figure leaves no held-out check: a
    warning."""
    toml = "[[constraints]]\nname = 'latency'\npattern = '^latncy:\\s*(\\S+)'\nmax = 45\n"
    root = make_task(train=LATENCY, extra_toml=toml)
    for _ in range(2):
        done = rsi("run", str(root), "--max-experiments", "5")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "the baseline reports nothing for constraint latency (logs under" in done.stderr, done.stderr
        assert "every candidate would be discarded for it" in done.stderr
    assert Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).count() == 1  # the baseline alone
    holdout = "[holdout]\ncommand = 'python3 train.py'\npattern = '^nothing:\\s*(\\S+)'\n"
    silent = make_task(train=LATENCY, extra_toml=holdout, name="silent")
    run = rsi("run", str(silent), "--max-experiments", "2")
    assert run.returncode == 0 and "warning: the [holdout] command gave no figure on the baseline" in run.stdout

"""The command line: bad input is one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import NOISY, MakeTask, commit_all, git, rsi
from rich.console import Console

from rsi.ledger import Experiment, Ledger
from rsi.view import LiveView


def edit_toml(root: Path, old: str, new: str) -> None:
    p = root / "rsi.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new))


BAD_TOML = [
    ("unknown key", 'timeout = "20s"', 'timeout = "20s"\ntimeuot = "5s"', "task.timeuot: unknown key"),
    ("unknown section", "[metric]", "[metrics]\nx = 1\n[metric]", "metrics: unknown key"),
    ("goal misspelled", 'goal = "minimize"', 'goal = "minimise"', "metric.goal"),
    ("bad duration", 'timeout = "20s"', 'timeout = "soon"', "task.timeout: 'soon' is not a duration"),
    ("negative duration", 'timeout = "20s"', "timeout = -3", "task.timeout"),
    ("bad size", 'timeout = "20s"', 'timeout = "20s"\nmemory = "lots"', "task.memory"),
    ("regex without group", "pattern = '^loss:\\s*(\\S+)'", "pattern = '^loss:'", "needs a group"),
    ("regex invalid", "pattern = '^loss:\\s*(\\S+)'", "pattern = '^loss:(('", "not a valid regex"),
    ("toml syntax", "[metric]", "[metric", "not valid TOML"),
    ("wrong type", 'editable = ["train.py"]', 'editable = "train.py"', "task.editable"),
    ("missing command", "command = ", "commandx = ", "task.command"),
    ("no metric source", "pattern = '^loss:\\s*(\\S+)'", "", "exactly one of 'pattern'"),
    (
        "both metric sources",
        "pattern = '^loss:\\s*(\\S+)'",
        "pattern = '(x)'\nfile = 'm.json'\nkey = 'k'",
        "exactly one",
    ),
    (
        "budget over timeout",
        'timeout = "20s"',
        'timeout = "20s"\nbudget = "20m"',
        "budget 1200s is not under timeout 20s",
    ),
    ("judge out of range", "[metric]", "[judge]\nconfidence = 1.5\n[metric]", "judge.confidence"),
    ("sampler unknown", "[metric]", '[knobs]\nsampler = "grid"\n[metric]', "knobs.sampler"),
    (
        "constraint min above max",
        "[metric]",
        '[[constraints]]\nname = "t"\nsource = "duration_s"\nmax = 5\nmin = 10\n[metric]',
        "min 10 is above max 5",
    ),
]


@pytest.mark.parametrize(("case", "old", "new", "expected"), BAD_TOML, ids=[c[0] for c in BAD_TOML])
def test_bad_config_is_one_line_and_exit_2(make_task: MakeTask, case: str, old: str, new: str, expected: str) -> None:
    root = make_task()
    # record something first: a bad config must never lose it
    assert rsi("run", str(root), "--max-experiments", "2").returncode == 0
    edit_toml(root, old, new)
    p = rsi("run", str(root), "--max-experiments", "3")
    assert p.returncode == 2, (case, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert len(s["experiments"]) == 2


def test_bad_config_is_validated_even_when_the_budget_is_spent(make_task: MakeTask) -> None:
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "2").returncode == 0
    edit_toml(root, 'timeout = "20s"', 'timeout = "20s"\nbogus = 1')
    assert rsi("run", str(root), "--max-experiments", "2").returncode == 2


@pytest.mark.slow
def test_bad_states_exit_2(make_task: MakeTask, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    cases = {
        "no rsi.toml": (rsi("run", str(plain)), "no rsi.toml"),
        "no ledger": (rsi("status", str(plain)), "no research here yet"),
        "bad time budget": (rsi("run", str(make_task(name="a")), "--time-budget", "later"), "--time-budget"),
        "zero experiments": (rsi("run", str(plain), "--max-experiments", "0"), "max-experiments"),
        "unknown proposer": (rsi("run", str(make_task(name="b")), "--proposer", "oracle"), "oracle"),
    }
    (plain / "rsi.toml").write_text((make_task(name="c") / "rsi.toml").read_text())
    cases["not a git repository"] = (rsi("run", str(plain)), "not a git repository")
    dirty = make_task(name="d")
    (dirty / "train.py").write_text("lr = 2\n")
    cases["uncommitted changes"] = (rsi("run", str(dirty)), "uncommitted changes")
    nometric = make_task(name="e", train="lr = 1.0\nprint('nothing')\n")
    cases["baseline without metric"] = (rsi("run", str(nometric)), "baseline gave no metric")
    notfound = make_task(name="f")
    edit_toml(notfound, "command = ", 'command = "no-such-program-xyz" #')
    commit_all(notfound, "cmd")
    cases["command not found"] = (rsi("run", str(notfound)), "command not found")
    for key, name in (("editable", "h"), ("frozen", "i")):
        typo = make_task(name=name)
        edit_toml(typo, f'{key} = ["', f'{key} = ["trian.py", "')
        commit_all(typo, "typo")
        cases[f"{key} glob matches nothing"] = (rsi("run", str(typo)), f"task.{key}: 'trian.py' matches no")
    overlap = make_task(name="k")  # its one editable file frozen too: a traceback after the baseline, before
    edit_toml(overlap, 'frozen = ["', 'frozen = ["train.py", "')
    commit_all(overlap, "frozen")
    cases["editable all frozen"] = (rsi("run", str(overlap)), "every file it matches is frozen too")
    noknobs = make_task(name="g", train="print('loss: 1.0')\n")
    cases["nothing to tune"] = (rsi("run", str(noknobs)), "no tunable literal")
    tagged = make_task(name="j")
    cases["tag not a branch name"] = (rsi("run", str(tagged), "--tag", "a b"), "cannot name a git branch")
    assert not (tagged / ".rsi" / "ledger.sqlite").exists()  # refused before anything was written
    cases["missing folder"] = (rsi("status", str(tmp_path / "nowhere")), "does not exist")
    researched = make_task(name="m")
    early = rsi("run", str(researched), "--time-budget", "0.0001s")  # spent before the baseline's first run
    assert early.returncode == 0 and "Traceback" not in early.stderr, early.stderr
    assert "the time budget ran out, before the baseline's first run: nothing was measured" in early.stdout
    assert rsi("run", str(researched), "--max-experiments", "1").returncode == 0
    huge = "99999999999999999999"  # beyond SQLite's integers
    cases["huge number: verify"] = (rsi("verify", huge, "--dir", str(researched)), f"no experiment #{huge}")
    cases["huge number: retest"] = (rsi("retest", huge, str(researched)), f"no experiment #{huge}")
    fork = rsi("fork", "--from", huge, "--tag", "x", str(researched))
    cases["huge number: fork"] = (fork, f"no experiment #{huge}")
    cases["a file, not a folder"] = (rsi("doctor", str(plain / "rsi.toml")), "is a file")
    for case, (p, expected) in cases.items():
        assert p.returncode == 2, (case, p.stderr)
        assert "Traceback" not in p.stderr, case
        assert expected in p.stderr, (case, p.stderr)


USAGE = [
    (("run", "--bogus"), "rsi run: No such option: --bogus"),
    (("run", "--workers", "0"), "rsi run: Invalid value for '--workers'"),
    (("run", "--max-experiments", "x"), "rsi run: Invalid value for '--max-experiments'"),
    (("frobnicate",), "rsi: No such command 'frobnicate'"),
    (("meta", "frobnicate"), "rsi meta: No such command 'frobnicate'"),
]


@pytest.mark.parametrize(("args", "expected"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    p = rsi(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert "--help" in lines[0]
    assert rsi("--help", cwd=tmp_path).returncode == 0  # help itself is no error


@pytest.mark.slow
def test_a_failed_baseline_is_measured_again_and_the_metric_cannot_change_under_a_research(
    make_task: MakeTask,
) -> None:
    """A baseline that gave no metric stops the research; with the task fixed, `rsi run` measures it again
    (before, it went on without one and ended in a traceback). Once it has a metric, rsi.toml's [metric] is
    the research's: a resume under another goal, name or pattern is refused, and nothing recorded changes."""
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 2\n")
    edit_toml(root, "pattern = '^loss:", "pattern = '^LOSS:")
    failed = rsi("run", str(root), "--max-experiments", "4")
    assert failed.returncode == 2 and "the baseline gave no metric" in failed.stderr
    assert rsi("export", str(root), "--format", "tsv").stdout.splitlines()[1].split("\t")[3] == "crash"
    edit_toml(root, "pattern = '^LOSS:", "pattern = '^loss:")
    again = rsi("run", str(root), "--max-experiments", "4")
    assert again.returncode == 0 and "measuring it again" in again.stdout, again.stderr
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["baseline"]["metric"] is not None and None not in s["baseline"]["runs"]  # the failed runs are gone
    assert len(s["experiments"]) == 4 and rsi("export", str(root)).stdout.splitlines()[1].split("\t")[3] == "keep"
    for old, new, said in (
        ('goal = "minimize"', 'goal = "maximize"', "(goal: 'minimize' -> 'maximize')"),
        ('name = "loss"', 'name = "val_loss"', "(metric: 'loss' -> 'val_loss')"),
        ("pattern = '^loss:", "pattern = 'loss:", "(pattern: '^loss:"),
        # what a run measures: a changed command would mix its figures into the champion's (it was accepted)
        ('train.py"', "train.py; echo 'loss: 0.001'\"", "(command: "),
    ):
        edit_toml(root, old, new)
        p = rsi("run", str(root), "--max-experiments", "6")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "is not the one this research was measured with " + said in p.stderr and "Traceback" not in p.stderr
        edit_toml(root, new, old)
    assert json.loads(rsi("status", str(root), "--json").stdout) == s  # nothing recorded changed
    # a resumed run's live lines show the best so far from the first one on
    resumed = rsi("run", str(root), "--max-experiments", "5")
    assert resumed.returncode == 0 and "best -" not in resumed.stdout and "#4 " in resumed.stdout
    # early stopping's progress lines are not the metric: they may be turned on mid-research
    edit_toml(root, "[metric]", "[metric]\nprogress_pattern = '^step (\\d+) loss (\\S+)'")
    assert rsi("run", str(root), "--max-experiments", "6").returncode == 0


def test_init_writes_a_valid_config(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("lr = 0.1\nprint('loss:', lr)\n")
    (tmp_path / "prepare.py").write_text("X = 1\n")
    (tmp_path / "program.md").write_text("research notes\n")
    p = rsi("init", str(tmp_path), "--from", "autoresearch")
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "rsi.toml").read_text()
    assert 'editable = ["train.py"]' in text and '"prepare.py"' in text and "^val_bpb:" in text
    # the comments of the lines filled in line up with the others
    assert {line.index("  # ") + 2 for line in text.splitlines() if "  # " in line and line[0] != "#"} == {38}
    again = rsi("init", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert rsi("init", str(tmp_path), "--force").returncode == 0
    assert rsi("init", str(tmp_path), "--from", "nanogpt", "--force").returncode == 2
    bare = tmp_path / "bare"  # no script: the names written are placeholders, and init says so
    bare.mkdir()
    empty = rsi("init", str(bare))
    assert empty.returncode == 0 and "main.py, which does not exist" in empty.stdout, empty.stdout


def test_init_then_run_on_a_fresh_repository(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("lr = 0.9\nprint(f'loss: {(lr - 0.3) ** 2:.5f}')\n")
    first = rsi("init", str(tmp_path))
    assert first.returncode == 0 and "not a git repository" in first.stdout  # said now, not only at run
    edit_toml(tmp_path, 'command = "python train.py"', 'command = "python3 train.py"')
    git(tmp_path, "init", "-q", "-b", "main")
    commit_all(tmp_path)
    again = rsi("init", str(tmp_path), "--force")
    assert again.returncode == 0 and "note:" not in again.stdout
    edit_toml(tmp_path, 'command = "python train.py"', 'command = "python3 train.py"')
    p = rsi("run", str(tmp_path), "--max-experiments", "6")
    assert p.returncode == 0, p.stderr
    s = json.loads(rsi("status", str(tmp_path), "--json").stdout)
    assert s["best"]["metric"] <= s["baseline"]["metric"]


@pytest.mark.slow
def test_runs_on_a_busy_machine_are_said_so_in_the_log_and_in_status(make_task: MakeTask) -> None:
    spin = """\
    import time
    lr = 0.5
    t = time.process_time()
    while time.process_time() - t < 1.05:
        pass
    print(f"loss: {lr:.3f}")
    """
    root = make_task(train=spin, extra_toml="[judge]\nbaseline_repeats = 2\n")
    loop = [sys.executable, "-c", "while True: pass"]
    cores = sorted(os.sched_getaffinity(0))
    # two busy loops per core, each its own session: the research's runs get about a third of the machine
    hogs = [subprocess.Popen(["taskset", "-c", str(c), *loop], start_new_session=True) for c in cores for _ in range(2)]
    try:
        p = rsi("run", str(root), "--max-experiments", "1")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert p.returncode == 0, p.stderr
    assert "warning: the machine is busy: in 2 run(s) so far other processes used 50% or more" in p.stdout
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["contended_runs"] == 2 and s["experiments"][0]["contended_runs"] == 2
    assert "2 run(s) on a busy machine" in rsi("status", str(root)).stdout


@pytest.mark.slow
def test_verify_reruns_the_champion_and_flags_a_change(make_task: MakeTask) -> None:
    drifting = """\
    import os, random
    lr = 0.5
    random.seed(int(os.environ["RSI_SEED"]))
    shift = float(os.environ.get("LOSS_SHIFT", "0"))  # a machine that changed under the research
    print(f"loss: {(lr - 0.12) ** 2 * 10 + shift + random.gauss(0, 0.01):.6f}")
    """
    root = make_task(train=drifting)
    assert rsi("run", str(root), "--max-experiments", "6").returncode == 0
    p = rsi("verify", "--dir", str(root), "--runs", "3")
    assert p.returncode == 0 and "reproduced" in p.stdout, p.stdout + p.stderr
    s = json.loads(rsi("status", str(root), "--json").stdout)
    base = s["experiments"][0]["commit"]
    assert rsi("verify", base[:10], "--dir", str(root), "--runs", "2").returncode == 0
    assert rsi("verify", "deadbeef", "--dir", str(root)).returncode == 2
    for name in ("0", "#0", "main"):  # an experiment number, or any name git has for the commit
        p = rsi("verify", name, "--dir", str(root), "--runs", "2")
        assert p.returncode == 0 and p.stdout.startswith("experiment 0 (baseline)"), (name, p.stdout + p.stderr)
    p = rsi("verify", base[:10], "--dir", str(root), "--runs", "3", env={"LOSS_SHIFT": "1"})
    assert p.returncode == 1 and "NOT reproduced" in p.stdout


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_failed_baseline_starts_again_from_the_commit_that_fixed_the_task(
    make_task: MakeTask, interrupted: bool
) -> None:
    root = make_task(train="lr = 0.5\nprint('loss: abc')\n")
    failed = rsi("run", str(root), "--max-experiments", "3")
    assert failed.returncode == 2 and "commit the fix, and `rsi run` again" in failed.stderr
    if interrupted:  # killed after some of its runs: the failed ones measured the broken commit, not the fix
        ledger = Ledger(root / ".rsi" / "ledger.sqlite")
        with ledger.transaction():
            ledger.update_experiment(0, state="proposed", verdict=None, status=None)
        ledger.close()
    (root / "train.py").write_text(NOISY)
    commit_all(root, "fix: print a number")
    fixed = git(root, "rev-parse", "HEAD").strip()
    again = rsi("run", str(root), "--max-experiments", "3")  # (it measured the broken start again, forever)
    assert again.returncode == 0 and f"{fixed[:10]} was committed since: starting from it" in again.stdout
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["experiments"][0]["commit"] == fixed and s["baseline"]["metric"] is not None
    baseline = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiment(0)
    assert baseline is not None and baseline.runs and all(r.metric is not None for r in baseline.runs)
    assert git(root, "merge-base", "--is-ancestor", fixed, f"rsi/{s['tag']}") == ""  # the branch grew from it


def test_verify_without_a_noise_estimate_cannot_judge_one_run_and_pools_more(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 1\n")
    assert rsi("run", str(root), "--max-experiments", "1").returncode == 0  # one run: no noise estimate
    one = rsi("verify", "--dir", str(root), "--runs", "1")
    assert one.returncode == 1 and "cannot judge:" in one.stdout and "NOT reproduced" not in one.stdout
    more = rsi("verify", "--dir", str(root), "--runs", "4")  # (it was "NOT reproduced" for any difference)
    assert more.returncode == 0 and "reproduced: recorded" in more.stdout and "allowed +-" in more.stdout


def test_plain_output_says_what_still_runs_after_a_quiet_spell() -> None:
    """A log (nohup, CI) has no live table: a run that takes minutes must not look like a hang."""
    buf = io.StringIO()
    view = LiveView(Console(file=buf, force_terminal=False, width=200), "minimize", None, None)
    running = Experiment(
        id=3, parent=0, parent_commit=None, commit_sha=None, kept_commit=None, proposer="knobs", hypothesis="h",
        params={}, diff="", state="running", status=None, verdict=None, reason="", interrupts=0, reverted=False,
        ci=None, created=time.time(), finished=None, runs=[],
    )  # fmt: skip
    view("running", running, "")
    beat = threading.Thread(target=view._heartbeat, kwargs={"every": 0.05})
    beat.start()
    try:
        deadline = time.monotonic() + 10
        while "still running" not in buf.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        view._done.set()
        beat.join()
    assert buf.getvalue().startswith("rsi: #3 still running (0 min since the last line)\n")
    with LiveView(Console(file=io.StringIO(), force_terminal=False), "minimize", None, None) as plain:
        assert plain._beat.is_alive()  # started for plain output only, and stopped with the view
    plain._beat.join(timeout=5)
    assert not plain._beat.is_alive()


def test_a_ledger_damaged_on_disk_is_one_line_pointing_at_doctor(make_task: MakeTask) -> None:
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "3").returncode == 0
    path = root / ".rsi" / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # its last pages overwritten: the header still reads, the tables do not
        f.seek(size - 3 * 4096)
        f.write(b"\x07" * 8192)
    for args in (("status", str(root)), ("run", str(root)), ("export", str(root))):
        p = rsi(*args)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (args, p.stderr)
        assert "ledger cannot be read" in p.stderr and "rsi doctor" in p.stderr and len(p.stderr.splitlines()) == 1
    assert "PROBLEM ledger" in rsi("doctor", str(root)).stdout


def test_a_refused_run_leaves_the_lock_clean(make_task: MakeTask) -> None:
    """A run refused after it took the task's lock (another tag, a changed rsi.toml) releases it as a clean stop
    does: the next command does not report a dead holder."""
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "1", "--tag", "a").returncode == 0
    refused = rsi("run", str(root), "--max-experiments", "2", "--tag", "b")
    assert refused.returncode == 2 and "rsi/a" in refused.stderr
    again = rsi("run", str(root), "--max-experiments", "2")
    assert again.returncode == 0 and "no longer running" not in again.stdout + again.stderr, again.stdout

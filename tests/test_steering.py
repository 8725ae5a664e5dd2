"""Steering a research while it runs: `rsi idea` reaches the LLM's prompt, `rsi pause` holds a running `rsi run`
and `rsi resume` lets it go on, without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MakeTask, git, rsi
from fake_llm import reply, serve
from test_llm import KEY, edit, toml
from test_resume import SLOW

from rsi.ledger import Ledger


def test_an_idea_reaches_the_llm_prompt_from_the_next_proposal(make_task: MakeTask) -> None:
    steps = [reply(edit("train.py", "lr = 0.5", "lr = 0.3")), reply(edit("train.py", "DEPTH = 3", "DEPTH = 5"))]
    with serve(steps) as (url, script):
        root = make_task(extra_toml=toml(url))
        first = rsi("run", str(root), "--max-experiments", "2", env={"FAKE_LLM_KEY": KEY})
        assert first.returncode == 0, first.stderr
        before = len(script.prompts())
        noted = rsi("idea", "try a cosine learning-rate schedule", str(root))
        assert noted.returncode == 0, noted.stderr
        assert "no LLM has proposed" not in noted.stdout
        again = rsi("run", str(root), "--max-experiments", "3", env={"FAKE_LLM_KEY": KEY})
        assert again.returncode == 0, again.stderr
        prompts = script.prompts()
    assert all("cosine" not in p for p in prompts[:before])
    assert "Ideas from the researcher" in prompts[-1] and "try a cosine learning-rate schedule" in prompts[-1]
    assert "Propose one change at a time" in prompts[-1]  # the research program's advice, before program.md
    ideas = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).ideas()
    assert [i["text"] for i in ideas] == ["try a cosine learning-rate schedule"]


def count(root: Path) -> int:
    path = root / ".rsi" / "ledger.sqlite"
    return Ledger(path, readonly=True).count() if path.exists() else 0


@pytest.mark.slow
def test_pause_holds_a_running_research_and_resume_lets_it_go_on(make_task: MakeTask) -> None:
    root = make_task(train=SLOW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while count(root) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert rsi("pause", str(root)).returncode == 0
        time.sleep(4)  # the experiment in flight finishes; no new one starts
        held = count(root)
        time.sleep(3)
        assert count(root) == held < 12 and proc.poll() is None
        assert json.loads(rsi("status", str(root), "--json").stdout)["paused"] is True
        assert "PAUSED" in rsi("status", str(root)).stdout
        assert rsi("resume", str(root)).stdout == "resumed\n"
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert count(root) == 12
    assert "paused by `rsi pause`" in out + err and "resumed" in out + err
    assert rsi("resume", str(root)).stdout == "not paused: nothing to resume\n"
    noted = rsi("idea", "try a wider model", str(root))  # a knobs research: the idea waits for an LLM proposer
    assert noted.returncode == 0 and "no LLM has proposed in this research yet" in noted.stdout


def test_steering_a_folder_without_a_research_is_one_line(make_task: MakeTask, tmp_path: Path) -> None:
    for args in (["pause", str(tmp_path)], ["resume", str(tmp_path)], ["idea", "x", str(tmp_path)]):
        done = rsi(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "1").returncode == 0
    empty = rsi("idea", "  ", str(root))
    assert empty.returncode == 2 and "empty" in empty.stderr


@pytest.mark.slow
def test_retest_measures_a_change_again_on_the_champion_while_the_research_runs(make_task: MakeTask) -> None:
    root = make_task(train=SLOW)
    assert rsi("run", str(root), "--max-experiments", "6").returncode == 0
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    target = next(e for e in reversed(ledger.experiments()) if e.verdict != "keep" and e.commit_sha and e.id > 0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while count(root) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        # Held while the retest is queued (otherwise the budget could be spent before the queue is read): a
        # pause stops new experiments at the next check, so at most one more starts before the retest.
        assert rsi("pause", str(root)).returncode == 0
        paused_at = count(root)
        queued = rsi("retest", str(target.id), str(root), "--repeats", "3")
        assert queued.returncode == 0 and "queued" in queued.stdout, queued.stderr
        assert rsi("resume", str(root)).returncode == 0
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    retests = [e for e in ledger.experiments() if e.proposer == "retest"]
    assert len(retests) == 1, [(e.id, e.proposer, e.hypothesis) for e in ledger.experiments()]
    again = retests[0]
    assert 8 <= again.id <= paused_at + 1 and again.params == {"retest_of": target.id, "max_repeats": 3}
    assert f"retest of #{target.id}" in again.hypothesis and again.state == "done"
    assert sum(1 for r in again.runs if r.kind == "screen") <= 3
    assert again.diff or again.reason  # the change on the champion of the time, or why it could not be replayed
    assert ledger.get_json("retests") == []
    for args, words in (
        (["retest", "999", str(root)], "no experiment #999"),
        (["retest", "0", str(root)], "in the champion already"),
    ):
        done = rsi(*args)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_fork_starts_a_line_from_any_experiment_beside_the_running_research(make_task: MakeTask) -> None:
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "8", "--tag", "main").returncode == 0
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    start = next(e for e in reversed(ledger.experiments()) if e.verdict != "keep" and e.commit_sha and e.id > 0)
    before = [(e.id, e.verdict, {r.id for r in e.runs}) for e in ledger.experiments()]
    made = rsi("fork", "--from", f"#{start.id}", "--tag", "wide", str(root))
    assert made.returncode == 0, made.stderr
    where = root / ".rsi" / "forks" / "wide"
    assert f"rsi run {where}" in made.stdout
    # the fork researches on its own (the original could be running: the fork has its own lock and ledger)
    proc = subprocess.Popen([sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", "12"])
    try:
        forked = rsi("run", str(where), "--max-experiments", "4")
        assert forked.returncode == 0, forked.stderr
    finally:
        assert proc.wait(timeout=180) == 0
    line = Ledger(where / ".rsi" / "ledger.sqlite", readonly=True)
    assert line.get("tag") == "wide" and line.get("start_commit") == start.commit_sha and line.count() == 4
    branch = subprocess.run(["git", "rev-parse", "rsi/wide"], cwd=where, capture_output=True, text=True, check=True)
    assert branch.stdout.strip()
    after = [(e.id, e.verdict, {r.id for r in e.runs}) for e in ledger.experiments()][: len(before)]
    # the original's experiments are as they were; only its champion may have gained fresh runs since
    assert [(i, v) for i, v, _ in after] == [(i, v) for i, v, _ in before]
    assert all(runs <= now for (_, _, runs), (_, _, now) in zip(before, after, strict=True))
    assert ledger.count() == 12 and ledger.get_json("forks")[0]["tag"] == "wide"
    fetched = subprocess.run(["git", "fetch", "-q", str(where), "rsi/wide:rsi/wide"], cwd=root, capture_output=True)
    assert fetched.returncode == 0, fetched.stderr
    for args, words in (
        (["fork", "--from", "#999", "--tag", "x", str(root)], "no experiment #999"),
        (["fork", "--from", "nope", "--tag", "x", str(root)], "neither an experiment number nor a commit"),
        (["fork", "--from", "0", "--tag", "bad..tag", str(root)], "cannot name a git branch"),
        (["fork", "--from", "0", "--tag", "wide", str(root)], "already has a branch rsi/wide"),  # fetched above
        (["fork", "--from", "0", "--tag", "main", str(root)], "already has a branch rsi/main"),  # the research's
        (["fork", "--from", "0", "--tag", "y", "--dir", str(root / "train.py"), str(root)], "not an empty folder"),
    ):
        done = rsi(*args)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_a_fork_from_a_commit_without_rsi_toml_takes_the_folders(make_task: MakeTask) -> None:
    root = make_task()
    git(root, "rm", "-q", "--cached", "rsi.toml")  # researched as `rsi init` leaves it: never committed
    git(root, "commit", "-q", "-m", "untrack rsi.toml")
    assert rsi("run", str(root), "--max-experiments", "2").returncode == 0
    made = rsi("fork", "--from", "1", "--tag", "w", str(root))
    assert made.returncode == 0, made.stderr
    where = root / ".rsi" / "forks" / "w"
    assert (where / "rsi.toml").read_text() == (root / "rsi.toml").read_text()
    assert "rsi fork: the rsi.toml of" in git(where, "log", "-1", "--format=%s")
    assert rsi("run", str(where), "--max-experiments", "2").returncode == 0
    assert git(where, "status", "--porcelain") == ""


def test_a_fork_that_fails_midway_leaves_no_clone_and_keeps_the_empty_folder_it_was_given(
    make_task: MakeTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsi import fork

    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "1").returncode == 0

    def broken(path: Path, readonly: bool = False) -> Ledger:
        if "forks" in str(path) or "given" in str(path):
            raise OSError("disk full")
        return Ledger(path, readonly=readonly)

    monkeypatch.setattr(fork, "Ledger", broken)
    given = tmp_path / "given"
    given.mkdir()
    for dest in (None, given):
        with pytest.raises(OSError, match="disk full"):
            fork.fork(root, "0", "w", dest)
    assert not (root / ".rsi" / "forks" / "w").exists()  # the folder it made: gone
    assert given.is_dir() and not any(given.iterdir())  # the folder the user named: there, and empty

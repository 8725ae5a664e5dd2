"""Kill the orchestrator at any moment (SIGKILL, Ctrl-C, SIGTERM); `rsi run` again resumes with nothing lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import MakeTask, git, rsi

from rsi.ledger import Ledger

SLOW = """\
import os, random, time
lr = 0.5
DEPTH = 3
time.sleep(0.25)
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""
TOTAL = 24
KILLS = 20


def start(root: Path, ignore_sigint: bool = False) -> subprocess.Popen[bytes]:
    """`rsi run` as a user starts it; with `ignore_sigint`, as a background job of a script starts it (SIGINT
    inherited ignored), which must not stop Ctrl-C or `kill -INT` from working."""
    return subprocess.Popen(
        [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", str(TOTAL), "--tag", "k"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
    )


def wait_for_ledger(root: Path) -> None:
    for _ in range(300):
        if (root / ".rsi" / "ledger.sqlite").exists():
            return
        time.sleep(0.05)


def check_consistent(root: Path) -> None:
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    assert [e.id for e in exps] == list(range(TOTAL))
    assert all(e.state == "done" for e in exps)
    # nothing lost or repeated: the baseline has its 5 fresh runs; no experiment ran one seed twice
    assert {1, 2, 3, 4, 5} <= {r.seed for r in exps[0].runs if r.kind == "fresh"}
    for e in exps:
        pairs = [(r.kind, r.seed) for r in e.runs]
        assert len(pairs) == len(set(pairs)), (e.id, pairs)
        if e.id > 0 and e.status != "rejected":
            assert any(r.kind == "screen" for r in e.runs)
    assert ledger.db.execute("SELECT COUNT(*) FROM runs WHERE state != 'done'").fetchone()[0] == 0
    kept = [e for e in exps if e.verdict == "keep"]
    head = git(root, "rev-parse", "rsi/k").strip()
    assert head == (kept[-1].kept_commit if kept else exps[0].commit_sha)
    # the branch is exactly the chain of kept commits
    chain = git(root, "rev-list", "rsi/k").split()
    assert chain[: len(kept)] == [e.kept_commit for e in reversed(kept)]
    for e in exps[1:]:
        if e.commit_sha:
            assert git(root, "rev-parse", f"refs/rsi/candidates/{e.id}").strip() == e.commit_sha
    assert len(git(root, "worktree", "list").splitlines()) == 1
    assert not any((root / ".rsi" / "worktrees").iterdir())
    orphans = []
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info.get("cwd") or ""
        if cwd.startswith(str(root / ".rsi")):
            orphans.append(p.pid)
    assert orphans == []


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(make_task: MakeTask) -> None:
    """Twenty-odd SIGKILLs at seeded random moments of one research; the doctor then finds the leftovers of
    the last kill (and repairs them), a second look finds nothing, and the resumed research ends consistent."""
    root = make_task(train=SLOW)
    rng = random.Random(7)
    kills = 0
    while kills < KILLS:
        proc = start(root)
        if kills == 0:  # once during start-up; the other kills count from the moment the research runs
            time.sleep(0.3)
        else:  # a loaded machine can take seconds to start Python: kills then would never reach the research
            wait_for_ledger(root)
            time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
    assert kills == KILLS, "the research finished before it was killed often enough: raise TOTAL"
    first = rsi("doctor", str(root))
    assert first.returncode == 0, first.stdout
    assert "PROBLEM" not in first.stdout
    second = rsi("doctor", str(root))
    assert second.returncode == 0 and "fixed" not in second.stdout and "PROBLEM" not in second.stdout, second.stdout
    final = rsi("run", str(root), "--max-experiments", str(TOTAL), "--tag", "k")
    assert final.returncode == 0, final.stderr
    check_consistent(root)
    last = rsi("doctor", str(root))
    assert last.returncode == 0 and "fixed" not in last.stdout, last.stdout


def test_doctor_repairs_what_a_kill_left_and_reports_damage(make_task: MakeTask) -> None:
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "3", "--tag", "d").returncode == 0
    wt = root / ".rsi" / "worktrees" / "99"
    git(root, "worktree", "add", "--detach", str(wt), "HEAD")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=wt)
    kept = git(root, "rev-parse", "rsi/d").strip()
    wrong = git(root, "commit-tree", "rsi/d^{tree}", "-p", "rsi/d", "-m", "a commit the ledger never made").strip()
    git(root, "update-ref", "refs/heads/rsi/d", wrong)
    git(root, "update-ref", "-d", "refs/rsi/candidates/1")
    fixed = rsi("doctor", str(root))
    assert fixed.returncode == 0, fixed.stdout
    for what in ("worktrees: removed 1", "processes: killed 1", "candidate refs restored", "branch rsi/d: moved"):
        assert what in fixed.stdout, (what, fixed.stdout)
    assert sleeper.wait(timeout=10) != 0
    assert git(root, "rev-parse", "rsi/d").strip() == kept
    saved = f"refs/rsi/saved/d/{wrong[:12]}"  # the commit made on the branch is not dropped
    assert f"kept as {saved}" in fixed.stdout and git(root, "rev-parse", saved).strip() == wrong
    clean = rsi("doctor", str(root))
    assert clean.returncode == 0 and "fixed" not in clean.stdout
    ledger = root / ".rsi" / "ledger.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{ledger}{extra}").unlink(missing_ok=True)
    data = bytearray(ledger.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    ledger.write_bytes(bytes(data))
    damaged = rsi("doctor", str(root))
    assert damaged.returncode == 1 and "PROBLEM" in damaged.stdout and "Traceback" not in damaged.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_cleanly_and_resumes(make_task: MakeTask, sig: signal.Signals) -> None:
    root = make_task(train=SLOW)
    proc = start(root, ignore_sigint=sig == signal.SIGINT)
    ledger = root / ".rsi" / "ledger.sqlite"
    for _ in range(300):  # interrupt mid-research, not during start-up (a loaded machine starts slowly)
        if ledger.exists() and Ledger(ledger, readonly=True).select_metrics():
            break
        time.sleep(0.1)
    time.sleep(0.3)
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert b"resume" in stderr and b"Traceback" not in stderr
    final = rsi("run", str(root), "--max-experiments", str(TOTAL))
    assert final.returncode == 0, final.stderr
    check_consistent(root)


def test_commits_gone_from_the_repository_are_said_and_the_research_goes_on(make_task: MakeTask) -> None:
    """Candidate refs deleted and the commits collected by `git gc`: doctor says so (no traceback), `rsi run`
    discards a pending experiment whose commit is gone and goes on, and `rsi verify` of one is one line."""
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "4", "--tag", "g").returncode == 0
    ledger = Ledger(root / ".rsi" / "ledger.sqlite")
    lost = [e for e in ledger.experiments("id > 0 AND kept_commit IS NULL AND commit_sha IS NOT NULL")]
    assert lost, "every candidate was kept: nothing to lose"
    with ledger.transaction():  # as if killed before it was measured
        ledger.db.execute("DELETE FROM runs WHERE experiment = ?", (lost[-1].id,))
        ledger.update_experiment(lost[-1].id, state="proposed", verdict=None, status=None, reason="")
    ledger.close()
    for e in lost:
        git(root, "update-ref", "-d", f"refs/rsi/candidates/{e.id}")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    doctor = rsi("doctor", str(root))
    assert "Traceback" not in doctor.stderr and f"the commits of experiments [{lost[0].id}" in doctor.stdout
    verify = rsi("verify", str(lost[0].id), "--dir", str(root))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr and len(verify.stderr.splitlines()) == 1
    again = rsi("run", str(root), "--max-experiments", "6", "--tag", "g")
    assert again.returncode == 0, again.stderr
    pending = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).experiment(lost[-1].id)
    assert pending is not None and pending.state == "done" and "its commit is gone" in pending.reason

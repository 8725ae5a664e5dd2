"""`rsi doctor`: check that a research's ledger, branch, worktrees and processes agree, and repair what is safe.

The ledger is the truth. What a killed orchestrator can leave behind is listed in the engine's docstring, and
`rsi run` repairs all of it on resume; the doctor does the same repairs on demand, says each one, and checks
what no repair should ever be needed for (a damaged ledger, a lost or duplicated experiment or run). While an
orchestrator holds the task's lock the doctor only reads: the running research owns its worktrees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.runner import kill_orphan
from rsi.workspace import Workspace, lock

Level = Literal["ok", "fixed", "problem"]


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str


class Doctor:
    def __init__(self, root: Path) -> None:
        self.ws = Workspace(root)
        self.ws.check_repository()
        self.path = self.ws.state / "ledger.sqlite"
        if not self.path.exists():
            raise UserError(f"no research here yet: {self.path} does not exist")
        self.findings: list[Finding] = []

    def say(self, level: Level, what: str) -> None:
        self.findings.append(Finding(level, what))

    def examine(self) -> list[Finding]:
        holder = _take_lock(self.ws.state / "lock")
        repair = holder is None
        if not repair:
            self.say("ok", f"rsi run (pid {holder}) is working on this task: checking only, repairing nothing")
        ledger = self._ledger(readonly=not repair)
        if ledger is None:
            return self.findings
        with contextlib.closing(ledger.db):
            self._experiments(ledger)
            if repair:
                self._interrupted(ledger)
            self._refs(ledger, repair)
            self._branch(ledger, repair)
            if repair:
                self._worktrees()
                self._processes()
        if repair:
            self.ws.close()  # leaves no pid of ours in the lock file for the next `rsi run` to report
        return self.findings

    def _ledger(self, readonly: bool) -> Ledger | None:
        try:
            ledger = Ledger(self.path, readonly=readonly)
            verdict = ledger.db.execute("PRAGMA integrity_check").fetchone()[0]
        except (UserError, sqlite3.DatabaseError) as e:
            self.say("problem", f"ledger: {e}")
            return None
        if verdict != "ok":
            self.say("problem", f"ledger: SQLite integrity check failed: {verdict}")
            return None
        self.say("ok", "ledger: intact")
        return ledger

    def _experiments(self, ledger: Ledger) -> None:
        ids = [int(r[0]) for r in ledger.db.execute("SELECT id FROM experiments ORDER BY id")]
        missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))
        if missing:
            self.say("problem", f"experiments lost: ids {missing[:10]} have no row")
        twice = ledger.db.execute(
            "SELECT experiment, kind, seed, COUNT(*) FROM runs WHERE state = 'done' "
            "GROUP BY experiment, kind, seed HAVING COUNT(*) > 1"
        ).fetchall()
        if twice:
            e, kind, seed, n = twice[0]
            self.say("problem", f"runs duplicated: experiment {e} ran {kind} seed {seed} {n} times (and more)")
        done = ledger.db.execute("SELECT COUNT(*) FROM experiments WHERE state = 'done' AND verdict IS NULL")
        if (undecided := int(done.fetchone()[0])) > 0:
            self.say("problem", f"{undecided} finished experiment(s) have no verdict")
        if not missing and not twice and not undecided:
            self.say("ok", f"experiments: {len(ids)}, none lost or duplicated")

    def _interrupted(self, ledger: Ledger) -> None:
        stale = ledger.interrupted_runs()
        running = ledger.experiments("state = 'running'")
        if not stale and not running:
            return
        for _, _, pid, started in stale:
            kill_orphan(pid, started)
        with ledger.transaction():
            ledger.drop_interrupted(stale)
            for e in running:
                ledger.update_experiment(e.id, state="proposed")
        self.say("fixed", f"{len(stale)} interrupted run(s) dropped; `rsi run` runs them again with the same seeds")

    def _refs(self, ledger: Ledger, repair: bool) -> None:
        recorded = {e.id: e.commit_sha for e in ledger.experiments("commit_sha IS NOT NULL AND id > 0")}
        lost = [i for i, sha in recorded.items() if sha and self.ws.ref(f"refs/rsi/candidates/{i}") != sha]
        gone = [i for i in lost if not self.ws.has_commit(recorded[i] or "")]
        if gone:
            self.say(
                "problem",
                f"the commits of experiments {gone[:10]} are gone from the repository (their refs deleted, then a "
                "git gc): their records stay; `rsi run` discards those not yet measured",
            )
            lost = [i for i in lost if i not in gone]
        if lost and repair:
            for i in lost:
                self.ws.set_ref(f"refs/rsi/candidates/{i}", recorded[i] or "")
            self.say("fixed", f"candidate refs restored for experiments {lost[:10]}")
        elif lost:
            self.say("problem", f"candidate refs missing for experiments {lost[:10]}")
        elif not gone:
            self.say("ok", f"candidates: all {len(recorded)} reachable under refs/rsi/candidates/")

    def _branch(self, ledger: Ledger, repair: bool) -> None:
        tag = ledger.get("tag")
        if tag is None:
            self.say("ok", "branch: none yet (the research has not started)")
            return
        want = ledger.branch_head() or ledger.get("start_commit") or ""
        have = self.ws.ref(f"refs/heads/rsi/{tag}")
        if not want:
            self.say("problem", "ledger: no start commit recorded, so the branch cannot be checked")
        elif have == want:
            self.say("ok", f"branch rsi/{tag}: at the last keep (or its revert) {want[:10]}")
        elif repair:
            saved = self.ws.restore_branch(tag, want)
            kept = f"; the commit it held is kept as {saved}" if saved else ""
            self.say(
                "fixed",
                f"branch rsi/{tag}: moved from {(have or 'nothing')[:10]} to where the ledger says, {want[:10]}" + kept,
            )
        else:
            self.say("problem", f"branch rsi/{tag} is at {(have or 'nothing')[:10]}, the ledger says {want[:10]}")

    def _worktrees(self) -> None:
        base = self.ws.state / "worktrees"
        left = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        registered = [
            line.split(" ", 1)[1]
            for line in self.ws.git("worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ") and str(base) in line
        ]
        if not left and not registered:
            self.say("ok", "worktrees: none left behind")
            return
        shutil.rmtree(base, ignore_errors=True)
        self.ws.git("worktree", "prune")
        self.say("fixed", f"worktrees: removed {len(left)} left behind by a stopped run ({', '.join(left[:5])})")

    def _processes(self) -> None:
        """Processes working in a worktree of this research when no orchestrator runs: runs it left behind.
        Only worktrees count (not a shell of the user's in .rsi/), and never the doctor or its parents."""
        worktrees = self.ws.state / "worktrees"
        ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        orphans = []
        for proc in psutil.process_iter(["cwd"]):
            cwd = proc.info.get("cwd")
            if cwd and proc.pid not in ours and Path(cwd).is_relative_to(worktrees):
                orphans.append(proc)
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if orphans:
            self.say("fixed", f"processes: killed {len(orphans)} left running by a stopped run")
        else:
            self.say("ok", "processes: none left running")


def _take_lock(path: Path) -> str | None:
    """Takes the task's lock for the doctor's repairs (held until the process exits); if a live orchestrator
    holds it, returns its pid instead. A lock whose holder died is free: the kernel released it."""
    try:
        lock(path)
    except UserError:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
    return None

"""Fault containment: every hostile candidate of tests/adversarial against the real `rsi run`, then SIGKILLs.

Part 1 runs each attack of tests/adversarial/attacks.py twice in one orchestrator (inside bubblewrap when it is
installed, and with the sandbox disabled for comparison, where the harness's limits alone must hold) and
prints, per attack: the recorded statuses, whether the canary API key leaked, what changed outside the
worktree, whether the orchestrator finished its budget, and processes left running.

Part 2 kills `rsi run` with SIGKILL at seeded random moments, resumes each time, and counts experiments lost
or duplicated, runs repeated, the branch's agreement with the ledger, and orphan worktrees and processes.
Target: every attack contained inside the sandbox, and zeros everywhere in part 2.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "adversarial"))
sys.path.insert(0, str(HERE.parent / "src"))

import psutil  # noqa: E402
from attacks import ATTACKS, cli, run_attack, sandbox_available  # noqa: E402

SLOW_TASK = """\
import os, random, time
lr = 0.5
DEPTH = 3
time.sleep(0.2)
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""


def attacks(sandbox: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for attack in ATTACKS:
        with tempfile.TemporaryDirectory() as d:
            o = run_attack(attack, Path(d), sandbox, cli)
        statuses, changes = "/".join(o.statuses) or "-", ", ".join(o.outside_changes) or "no"
        box = "bubblewrap" if sandbox else "none"
        rows.append(
            {
                "attack": attack.name,
                "sandbox": box,
                "statuses": statuses,
                "leaked": o.leaked,
                "outside_changes": changes,
                "orchestrator_alive": o.alive,
                "left_running": o.left_running,
                "contained": o.contained,
            }
        )
        print(
            f"{box:11}{attack.name[:62]:63}{statuses:20}{'yes' if o.leaked else 'no':7}"
            f"{changes[:24]:25}{'yes' if o.alive else 'NO':6}{o.left_running:5}"
            f"{'yes' if o.contained else 'NO':>9}",
            flush=True,
        )
    return rows


def kills(trials: int, seed: int) -> dict[str, object]:
    """SIGKILL `rsi run` `trials` times at random moments, resume to the end, and audit the result."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "task"
        root.mkdir()
        (root / "train.py").write_text(SLOW_TASK)
        (root / "rsi.toml").write_text(
            textwrap.dedent(f"""\
            [task]
            editable = ["train.py"]
            command = "{sys.executable} train.py"
            timeout = "20s"
            [metric]
            name = "loss"
            goal = "minimize"
            pattern = '^loss:\\s*(\\S+)'
            """)
        )
        git = ["git", "-c", "user.email=b@b", "-c", "user.name=b"]
        subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
        subprocess.run([*git, "add", "-A"], cwd=root, check=True)
        subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
        total = max(12, trials + 4)
        argv = [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", str(total), "--tag", "f"]
        rng = random.Random(seed)
        done_kills = 0
        while done_kills < trials:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 1.8))
            if proc.poll() is not None:
                break
            proc.kill()
            proc.wait()
            done_kills += 1
        final = subprocess.run(argv, capture_output=True, text=True)
        doctor = cli("doctor", str(root))
        db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
        ids = [r[0] for r in db.execute("SELECT id FROM experiments ORDER BY id")]
        repeated = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM runs GROUP BY experiment, kind, seed HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        kept = db.execute(
            "SELECT kept_commit FROM experiments WHERE verdict = 'keep' AND kept_commit IS NOT NULL "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        start = db.execute("SELECT value FROM meta WHERE key = 'start_commit'").fetchone()[0]
        head = subprocess.run(["git", "rev-parse", "rsi/f"], cwd=root, capture_output=True, text=True).stdout.strip()
        worktrees = len(list((root / ".rsi" / "worktrees").glob("*")))
        orphans = sum(
            1 for p in psutil.process_iter(["cwd"]) if (p.info.get("cwd") or "").startswith(str(root / ".rsi"))
        )
        return {
            "kills": done_kills,
            "resumed_ok": final.returncode == 0,
            "experiments": len(ids),
            "experiments_lost": len(set(range(total)) - set(ids)),
            "experiments_duplicated": len(ids) - len(set(ids)),
            "runs_repeated": repeated,
            "branch_matches_ledger": head == (kept[0] if kept else start),
            "orphan_worktrees": worktrees,
            "orphan_processes": orphans,
            "doctor_clean": doctor.returncode == 0 and "fixed" not in doctor.stdout,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the sandboxed attacks and 20 kills (a few minutes)")
    args = ap.parse_args()
    have_bwrap = sandbox_available()
    head = f"{'sandbox':11}{'attack':63}{'statuses':20}{'leaked':7}{'outside changes':25}{'alive':6}{'left':5}"
    print(head + f"{'contained':>9}")
    rows: list[dict[str, object]] = []
    if have_bwrap:
        rows += attacks(sandbox=True)
    else:
        print("bubblewrap is not installed: the sandboxed half is skipped (apt install bubblewrap)")
    if not args.quick or not have_bwrap:
        rows += attacks(sandbox=False)
    trials = 20 if args.quick else 50
    audit = kills(trials, seed=11)
    print()
    print(f"{'SIGKILL trials':24}{audit['kills']}")
    for key in ("experiments_lost", "experiments_duplicated", "runs_repeated", "orphan_worktrees", "orphan_processes"):
        print(f"{key.replace('_', ' '):24}{audit[key]}")
    print(f"{'branch matches ledger':24}{audit['branch_matches_ledger']}")
    print(f"{'doctor finds all clean':24}{audit['doctor_clean']}")
    sandboxed = [r for r in rows if r["sandbox"] == "bubblewrap"]
    met = (
        bool(sandboxed)
        and all(r["contained"] for r in sandboxed)
        and audit["kills"] == trials
        and audit["resumed_ok"] is True
        and all(audit[k] == 0 for k in ("experiments_lost", "experiments_duplicated", "runs_repeated"))
        and audit["orphan_worktrees"] == 0
        and audit["orphan_processes"] == 0
        and audit["branch_matches_ledger"] is True
    )
    target = "every attack contained inside the sandbox; after the kills nothing lost, duplicated or orphaned"
    print(json.dumps({"benchmark": "faults", "attacks": rows, "kills": audit, "target": target, "met": met}))


if __name__ == "__main__":
    main()

"""Worker utilization with a slow model: proposing while experiments run, against propose-then-run.

A fake OpenAI-compatible server on 127.0.0.1 answers every call after L seconds with a new, valid edit; each
experiment is one run of a script that sleeps 3L (the metric is pure noise, so nothing is kept and every
proposal stays valid). Utilization is the time the worker spent running experiments over the wall clock from
the first candidate's proposal to the last run's end. A sequential loop gets 3L / (L + 3L) = 0.75.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

from fake_llm import Step, serve  # noqa: E402

from rsi.config import load_config  # noqa: E402
from rsi.engine import Limits, Research  # noqa: E402
from rsi.researcher import LLMProposer  # noqa: E402
from rsi.store import Store  # noqa: E402

TASK = """\
import os, random, time
DEPTH = 3
time.sleep({run})
print("loss:", random.Random(int(os.environ["RSI_SEED"])).gauss(1.0, 0.1))
"""


def make_task(root: Path, run_s: float, url: str) -> None:
    root.mkdir()
    (root / "train.py").write_text(TASK.format(run=run_s))
    (root / "rsi.toml").write_text(
        textwrap.dedent(f"""\
        [task]
        editable = ["train.py"]
        command = "{sys.executable} train.py"
        [metric]
        name = "loss"
        goal = "minimize"
        pattern = '^loss:\\s*(\\S+)'
        [judge]
        baseline_repeats = 2
        max_repeats = 1
        [proposer]
        kind = "llm"
        [[proposer.models]]
        provider = "openai"
        model = "slow"
        base_url = "{url}/v1"
        """)
    )
    git = ["git", "-c", "user.email=b@b", "-c", "user.name=b"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=root, check=True)


def replies(n: int, latency: float) -> list[Step]:
    edit = "Hypothesis: variant {i}\ntrain.py\n<<<<<<< SEARCH\nDEPTH = 3\n=======\nDEPTH = 3  # variant {i}\n"
    edit += ">>>>>>> REPLACE\n"
    return [Step(text=edit.format(i=i), delay=latency) for i in range(n)]


def utilization(overlap: bool, candidates: int, latency: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, serve(replies(candidates + 5, latency)) as (url, _):
        root = Path(d) / "task"
        make_task(root, 3 * latency, url)
        cfg = load_config(root)

        def factory(ws: Store, start: str) -> LLMProposer:
            p = LLMProposer(cfg.proposer, program="", frozen=[], metric="loss", goal="minimize")
            p.overlap = overlap
            return p

        Research(root, cfg, factory).run(Limits(max_experiments=candidates + 1))
        db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
        # from the first candidate's proposal (its call started then) to the end; champion re-measurements
        # are the worker's work too
        start = db.execute("SELECT MIN(created - duration_s) FROM calls").fetchone()[0]
        busy, end = db.execute(
            "SELECT SUM(finished - started), MAX(finished) FROM runs WHERE started >= ?", (start,)
        ).fetchone()
        n = db.execute("SELECT COUNT(*) FROM experiments WHERE id > 0 AND status = 'ok'").fetchone()[0]
        db.close()
    return {"utilization": busy / (end - start), "experiments": n, "wall_s": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 candidates instead of 20")
    args = ap.parse_args()
    candidates, latency = (8, 0.5) if args.quick else (20, 0.5)
    rows = {
        "sequential (propose, then run)": utilization(False, candidates, latency),
        "rsi (propose while running)": utilization(True, candidates, latency),
    }
    print(f"model latency {latency}s, runs {3 * latency}s, {candidates} candidates")
    print(f"{'loop':34}{'utilization':>12}{'experiments':>13}{'wall s':>9}")
    for name, r in rows.items():
        print(f"{name:34}{r['utilization']:12.3f}{r['experiments']:13d}{r['wall_s']:9.1f}")
    met = rows["rsi (propose while running)"]["utilization"] >= 0.95
    target = "rsi's utilization >= 0.95 (the sequential loop gets about 0.75)"
    print(json.dumps({"benchmark": "utilization", "figures": rows, "target": target, "met": met}))


if __name__ == "__main__":
    main()

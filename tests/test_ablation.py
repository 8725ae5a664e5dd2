"""`rsi ablate`: each kept change reverted alone from the final champion, measured on fresh seeds."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MakeTask, git, rsi

from rsi.ablation import _label, revert, undo
from rsi.ledger import Ledger
from rsi.workspace import Workspace

# A is worth 1 on its own. B is worth 0.5, and C 0.8, but not together: with C, B adds nothing. Kept in the order
# A, B, C, B ends up redundant; D is worth 0.3 alone and costs 0.6 once E (worth 1.2) is in: it hurts.
TRAIN = """\
import os, random
A = 0
B = 0
C = 0
D = 0
E = 0
random.seed(int(os.environ["RSI_SEED"]))
loss = 10 - 1.0 * A - (0.8 if C else 0.5 * B) - 1.2 * E + (0.6 * D if E else -0.3 * D)
print(f"loss: {loss + random.gauss(0, 0.02):.6f}")
"""


# What a model might have done: one letter set to 1 per proposal, in order. Run in a process of its own, as
# `rsi run` would be: a research holds the task's lock for as long as its process lives.
SCRIPTED = """
import sys
from pathlib import Path
from rsi.config import load_config
from rsi.engine import Limits, Research
from rsi.proposer import Proposal

class Script:
    name, done_reason, overlap = "script", "the script is over", False

    def __init__(self, letters):
        self.letters = list(letters)

    def propose(self, ctx):
        if not self.letters:
            return None
        letter = self.letters.pop(0)
        text = ctx.files["train.py"].replace(f"{letter} = 0", f"{letter} = 1")
        return Proposal({"train.py": text}, f"set {letter}")

    def observe(self, exp):
        return None

root = Path(sys.argv[1])
Research(root, load_config(root), lambda store, start: Script(sys.argv[2]), tag="t").run(Limits())
"""


def research(root: Path, letters: str) -> Ledger:
    subprocess.run([sys.executable, "-c", SCRIPTED, str(root), letters], check=True, capture_output=True)
    return Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)


def test_ablation_tells_what_matters_what_is_redundant_and_what_hurts(make_task: MakeTask) -> None:
    root = make_task(train=TRAIN, extra_toml="[judge]\nbaseline_repeats = 3\nreplicate = 2\n")
    ledger = research(root, "ABCDE")
    kept = {e.hypothesis: e.id for e in ledger.experiments("verdict = 'keep'")}
    assert set(kept) == {"set A", "set B", "set C", "set D", "set E"}, ledger.experiments()
    done = rsi("ablate", str(root), "--repeats", "4", "--simplify")
    assert done.returncode == 0, done.stderr
    lines = {m.group(1): line for line in done.stdout.splitlines() if (m := re.search(r"set ([A-E])", line))}
    assert "matters" in lines["A"] and "matters" in lines["C"] and "matters" in lines["E"], done.stdout
    assert "redundant" in lines["B"] and "hurts" in lines["D"], done.stdout
    assert "as good" in done.stdout or "better than the champion" in done.stdout, done.stdout
    simplified = subprocess.run(
        ["git", "show", "rsi/t-simplified:train.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "B = 0" in simplified and "D = 0" in simplified and "A = 1" in simplified and "C = 1" in simplified
    # the measurements are recorded: a second call measures nothing new and says the same
    ablation = Ledger(root / ".rsi" / "ablation.sqlite", readonly=True)
    runs = sum(len(e.runs) for e in ablation.experiments())
    again = rsi("ablate", str(root), "--repeats", "4", "--simplify")
    assert again.returncode == 0 and again.stdout == done.stdout, again.stderr
    assert sum(len(e.runs) for e in ablation.experiments()) == runs
    with sqlite3.connect(root / ".rsi" / "ablation.sqlite") as db:  # as if made from labels since changed
        db.execute("UPDATE experiments SET params = '{\"without\": [1]}' WHERE proposer = 'simplified'")
    stale = rsi("ablate", str(root), "--repeats", "4")
    assert stale.returncode == 0 and "simplified" not in stale.stdout and "redundant" in stale.stdout, stale.stdout
    assert rsi("report", str(root)).returncode == 0
    html = (root / ".rsi" / "report.html").read_text()
    assert "Ablation" in html and "redundant" in html and "hurts" in html
    # rsi.toml measuring otherwise than the research did: refused as `rsi run` refuses it, nothing measured
    toml = root / "rsi.toml"
    toml.write_text(toml.read_text().replace('goal = "minimize"', 'goal = "maximize"'))
    flipped = rsi("ablate", str(root), "--repeats", "4", "--simplify")
    assert flipped.returncode == 2 and "goal: 'minimize' -> 'maximize'" in flipped.stderr, flipped.stderr
    assert len(flipped.stderr.strip().splitlines()) == 1 and "Traceback" not in flipped.stderr
    assert sum(len(e.runs) for e in ablation.experiments()) == runs


def test_a_change_rewritten_later_is_overwritten_and_bad_input_is_one_line(make_task: MakeTask) -> None:
    root = make_task(train=TRAIN)
    ws = Workspace(root)
    head = ws.head()
    first = ws.commit_tree_with(head, {"train.py": ws.read(head, "train.py").replace("A = 0", "A = 1")}, "A 1")
    second = ws.commit_tree_with(first, {"train.py": ws.read(first, "train.py").replace("A = 1", "A = 2")}, "A 2")
    assert revert(ws, first, second) == {}  # nothing of it is left to undo
    undone = revert(ws, second, second)
    assert undone is not None and "A = 1" in undone["train.py"]
    # a later keep that builds on the change: reverting it alone would leave Python that does not parse
    base = ws.commit_tree_with(head, {"train.py": "if a:\n    x()\n"}, "if")
    change = ws.commit_tree_with(base, {"train.py": "try:\n    y()\n"}, "try")
    later = ws.commit_tree_with(change, {"train.py": "try:\n    y()\nexcept OSError:\n    pass\n"}, "except")
    assert revert(ws, change, later) is None
    git(root, "checkout", "-q", "-b", "other")
    nothing = rsi("ablate", str(root))
    assert nothing.returncode == 2 and "no research" in nothing.stderr and "Traceback" not in nothing.stderr
    research(root, "")  # a baseline, nothing kept
    empty = rsi("ablate", str(root))
    assert empty.returncode == 2 and "nothing was kept" in empty.stderr, empty.stderr
    wrong = rsi("ablate", str(root), "--tag", "zzz")
    assert wrong.returncode == 2 and "rsi/t" in wrong.stderr


def test_undo_reverts_one_change_at_either_end_of_a_file_and_leaves_later_edits() -> None:
    cases = [  # before, after (the change), now (the champion) -> now without the change
        ("a\nb\nc\n", "X\nb\nc\n", "X\nb\nc\nd\n", "a\nb\nc\nd\n"),  # first line rewritten
        ("a\nb\nc\n", "a\nb\nZ\n", "q\na\nb\nZ\n", "q\na\nb\nc\n"),  # last line rewritten
        ("a\nb\nc\n", "b\nc\n", "b\nc\nd\n", "a\nb\nc\nd\n"),  # first line deleted
        ("a\nb\nc\n", "a\nb\n", "q\na\nb\n", "q\na\nb\nc\n"),  # last line deleted
        ("a\n", "a\nnew\n", "a\nnew\nmore\n", "a\nmore\n"),  # a line added at the end
        ("a\n", "b\n", "c\n", "c\n"),  # rewritten again later: nothing of it is left to undo
        ("x = 1\ny = 1\n", "x = 2\ny = 1\n", "x = 2\ny = 3\n", "x = 1\ny = 3\n"),  # a later keep on the next line
        # three knobs changed together, two of them changed again later: the third is still the change's
        ("lr = 1\nw = 8\nm = 0\n", "lr = 2\nw = 24\nm = 1\n", "lr = 3\nw = 24\nm = 2\n", "lr = 3\nw = 8\nm = 2\n"),
    ]
    for before, after, now, want in cases:
        assert undo(before, after, now) == want, (before, after, now)


@pytest.mark.slow
def test_a_killed_ablation_leaves_no_run_behind_and_resumes(make_task: MakeTask, tmp_path: Path) -> None:
    flag = tmp_path / "slow"  # runs take seconds once it exists: the ablation's, not the research's
    slow = TRAIN.replace(
        "import os, random", f"import os, random, time\ntime.sleep(4 if os.path.exists({str(flag)!r}) else 0)"
    )
    # unsandboxed: bubblewrap's --die-with-parent would end the run with the ablation, and there would be no
    # orphan for the resumed ablation to find
    toml = "[judge]\nbaseline_repeats = 3\nreplicate = 2\n[sandbox]\nenabled = false\n"
    root = make_task(train=slow, extra_toml=toml)
    research(root, "A")
    flag.touch()
    proc = subprocess.Popen([sys.executable, "-m", "rsi", "ablate", str(root), "--repeats", "2"])
    path = root / ".rsi" / "ablation.sqlite"
    deadline = time.monotonic() + 60
    running: list[tuple[int, int, int | None, float | None]] = []
    while not running:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
        if path.exists():
            try:
                running = [r for r in Ledger(path, readonly=True).interrupted_runs() if r[2] is not None]
            except sqlite3.Error:  # the file exists before its tables do
                running = []
    proc.kill()  # SIGKILL: no clean-up of its own; the run it had started goes on
    proc.wait()
    pid = running[0][2]
    assert pid is not None and alive(pid)
    done = rsi("ablate", str(root), "--repeats", "2")
    assert done.returncode == 0 and "matters" in done.stdout, done.stderr
    assert not alive(pid)
    ablation = Ledger(path, readonly=True)
    assert ablation.interrupted_runs() == [] and all(len(e.runs) == 2 for e in ablation.experiments())
    git(root, "branch", "rsi/t-simplified", "HEAD")  # left by an ablation whose labels have changed since
    simplify = rsi("ablate", str(root), "--repeats", "2", "--simplify")
    assert simplify.returncode == 0 and "removed" in simplify.stderr, simplify.stderr
    assert "rsi/t-simplified" not in git(root, "branch", "--list")
    again = rsi("ablate", str(root), "--repeats", "2", "--simplify")  # nothing to drop: said, not silent
    assert again.returncode == 0 and "nothing to simplify: no kept change is shown redundant" in again.stderr


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_change_is_redundant_only_when_shown_to_deliver_under_half_its_gain() -> None:
    assert _label(0.3, 0.1, 0.3) == "matters" and _label(-0.3, 0.1, 0.3) == "hurts"
    assert _label(0.01, 0.05, 0.3) == "redundant"  # at most 0.06 now, of the 0.3 it gained: under half
    assert _label(0.095, 0.1, 0.0785) == "unclear"  # could still be all of its gain: more runs are needed
    assert _label(0.0, 0.05, None) == "unclear"  # no gain recorded to compare with
    assert _label(None, None, 0.3).startswith("not measured")

"""Several experiments at once: slots (cores, threads, GPUs), a consistent research, and the rule that nothing
is kept on measurements of code other than what is committed."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import MakeTask, git, rsi
from test_engine import Scripted
from test_resume import SLOW

from rsi.config import load_config
from rsi.engine import Limits, Research
from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.proposer import Context, Proposal
from rsi.slots import plan, visible_gpus


def test_plan_deals_cores_in_blocks_and_one_experiment_per_gpu() -> None:
    slots, note = plan(2, cores=[0, 1, 2, 3])
    assert [s.cpus for s in slots] == [(0, 1), (2, 3)] and note == ""
    assert slots[0].env()["OMP_NUM_THREADS"] == "2" and "CUDA_VISIBLE_DEVICES" not in slots[0].env()
    slots, _ = plan(None, gpus=[0, 1, 2, 3], cores=list(range(8)))
    assert [s.gpus for s in slots] == [(0,), (1,), (2,), (3,)]
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "2", "3"]
    slots, _ = plan(None, gpus=[4, 5, 6, 7], gpus_per_experiment=2, cores=list(range(8)))
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["4,5", "6,7"] and slots[1].cpus == (4, 5, 6, 7)
    slots, note = plan(3, cores=[0, 1])
    assert [s.cpus for s in slots] == [(0,), (1,), (0,)] and "share" in note
    (alone,), _ = plan(1, cores=[0, 1])
    assert alone.cpus == () and alone.env() == {}  # one at a time: the machine as without rsi


@pytest.mark.parametrize(
    ("workers", "gpus", "per", "cpus", "words"),
    [
        (3, [0, 1], 1, None, "3 workers need 3 GPUs"),
        (None, [0, 0], 1, None, "listed twice"),
        (None, [0, 1], 3, None, "between 1 and the 2 GPUs"),
        (2, [], 1, 64, "cpus_per_experiment = 64"),
    ],
)
def test_plan_refuses_what_cannot_be_dealt(
    workers: int | None, gpus: list[int], per: int, cpus: int | None, words: str
) -> None:
    with pytest.raises(UserError, match=words):
        plan(workers, gpus, per, cpus, cores=[0, 1])


def test_bad_worker_flags_are_one_line_and_exit_2(make_task: MakeTask) -> None:
    root = make_task()
    for args, words in (
        (["--gpus", "a,b"], "--gpus 'a,b'"),
        (["--workers", "3", "--gpus", "0,1"], "3 workers need 3 GPUs"),
        (["--workers", "0"], "--workers"),
        (["--address", "auto"], "--address is the Ray cluster to join: add --executor ray"),  # (it was ignored)
    ):
        done = rsi("run", str(root), "--max-experiments", "2", *args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = rsi("run", str(root), "--max-experiments", "2", "--executor", "mars")
    assert done.returncode == 2 and "local or ray" in done.stderr and "Traceback" not in done.stderr
    (root / "rsi.toml").write_text((root / "rsi.toml").read_text() + '\n[executor]\nkind = "slurm"\n')
    done = rsi("run", str(root), "--max-experiments", "2")
    assert done.returncode == 2 and "executor.kind" in done.stderr and "Traceback" not in done.stderr


def kept_chain_is_measured(root: Path, tag: str) -> list[int]:
    """Every keep was measured on exactly the commit it kept, against the branch head it was kept on: its
    parent commit is the previous keep's commit, and its kept commit holds the tree its runs measured."""
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    head = exps[0].commit_sha
    kept = []
    for e in sorted((e for e in exps if e.verdict == "keep"), key=lambda e: e.finished or 0):
        assert e.parent_commit == head, f"#{e.id} was measured on {e.parent_commit}, the branch was at {head}"
        assert e.kept_commit and e.commit_sha
        assert git(root, "rev-parse", f"{e.kept_commit}^{{tree}}") == git(root, "rev-parse", f"{e.commit_sha}^{{tree}}")
        assert git(root, "rev-parse", f"{e.kept_commit}^").strip() == head
        envs = [json.loads(r[0]) for r in ledger.db.execute("SELECT env FROM runs WHERE experiment = ?", (e.id,))]
        assert {env["commit"] for env in envs} == {e.commit_sha}
        head = e.kept_commit
        kept.append(e.id)
    assert git(root, "rev-parse", f"rsi/{tag}").strip() == head
    return kept


def test_a_winner_against_an_old_best_is_rebased_and_measured_again(make_task: MakeTask) -> None:
    """Two gains proposed at once against the baseline: the second to win finds the branch moved. It is not
    kept on those figures; its change, merged onto the new best, is a new experiment measured against it,
    and kept on its own figures. The branch ends holding both changes."""
    train = """\
        import os, random, time
        a = 0
        SCALE = 1.0  # a line between the two changes: git merges them without a conflict
        b = 0
        time.sleep(0.05 if b else 0.6)
        random.seed(int(os.environ["RSI_SEED"]))
        print(f"loss: {(5 - a - b) * SCALE + random.gauss(0, 0.01):.6f}")
        """
    root = make_task(train=train, extra_toml="[executor]\nworkers = 2\n")
    text = (root / "train.py").read_text()
    proposals = [
        Proposal({"train.py": text.replace("a = 0", "a = 1")}, "a = 1", {"a": 1, "b": 0, "model": "m"}),
        Proposal({"train.py": text.replace("b = 0", "b = 2")}, "b = 2", {"a": 0, "b": 2, "model": "m"}),
    ]
    scripted = Scripted(proposals)
    research = Research(root, load_config(root), lambda ws, start: scripted, tag="w")
    research.run(Limits(max_experiments=10))
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = {e.id: e for e in ledger.experiments()}
    superseded = [e for e in exps.values() if e.reason.startswith("superseded:")]
    assert len(superseded) == 1, [(e.id, e.verdict, e.reason) for e in exps.values()]
    loser = superseded[0]
    assert loser.verdict == "discard" and loser.kept_commit is None
    (rebased,) = [e for e in exps.values() if e.parent == loser.id]
    assert "rebased from" in rebased.hypothesis and rebased.verdict == "keep", rebased.reason
    # its params are the knob values it holds (a proposer learns from them), not its original's; the rest is kept
    assert rebased.params == {"a": 1, "b": 2, "model": "m"}, rebased.params
    assert kept_chain_is_measured(root, "w") == [3 - loser.id, rebased.id]
    final = git(root, "show", "rsi/w:train.py")
    assert "a = 1" in final and "b = 2" in final
    assert sorted(scripted.seen) == sorted(exps)  # the proposer heard of every experiment, the rebase included


@pytest.mark.slow
def test_each_run_gets_its_slot_cores_threads_and_gpu(make_task: MakeTask) -> None:
    """Two GPUs given on a 2-core machine: two workers, one core and one GPU each. The task sees its affinity,
    the thread variables, PyTorch's thread count and CUDA_VISIBLE_DEVICES; the ledger records the slot."""
    train = """\
        import os, random
        import torch
        lr = 0.5
        print("cpus", sorted(os.sched_getaffinity(0)), "omp", os.environ.get("OMP_NUM_THREADS"),
              "torch", torch.get_num_threads(), "gpus", os.environ.get("CUDA_VISIBLE_DEVICES"))
        random.seed(int(os.environ["RSI_SEED"]))
        print(f"loss: {(lr - 0.1) ** 2 + random.gauss(0, 0.01):.6f}")
        """
    root = make_task(train=train)
    cores = sorted(os.sched_getaffinity(0))
    done = rsi("run", str(root), "--max-experiments", "4", "--gpus", "0,1", "--tag", "g")
    assert done.returncode == 0, done.stderr
    assert ("but this machine shows no GPU device" in done.stdout) == (not visible_gpus()), done.stdout
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    rows = ledger.db.execute("SELECT env, stdout_tail FROM runs WHERE kind != 'holdout'").fetchall()
    assert len(rows) >= 6
    seen = set()
    for env_text, out in rows:
        env = json.loads(env_text)
        slot = int(env["slot"][1:])
        per = max(1, len(cores) // 2)
        want = cores[slot * per : (slot + 1) * per]
        assert f"cpus {want} omp {per} torch {per} gpus {slot}" in out, (env, out)
        assert env["gpus"] == str(slot) and env["cpus"] == ",".join(map(str, want))
        seen.add(slot)
    assert seen == {0, 1}


def overlapped(root: Path) -> bool:
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    spans = ledger.db.execute("SELECT started, finished FROM runs WHERE finished IS NOT NULL ORDER BY started")
    rows = list(spans)
    return any(b[0] < a[1] for a, b in itertools.pairwise(rows))


@pytest.mark.slow
def test_workers_survive_interrupts_and_kills_then_resume_consistent(make_task: MakeTask) -> None:
    """`rsi run --workers 3`: Ctrl-C stops every worker's run at once (exit 130, no process left), a SIGKILL
    leaves what doctor repairs, and the resumed research ends consistent, with runs really in parallel."""
    root = make_task(train=SLOW)
    argv = [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", "20", "--tag", "p", "--workers", "3"]
    ledger = root / ".rsi" / "ledger.sqlite"
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(600):
            if ledger.exists() and Ledger(ledger, readonly=True).count() > 4:
                break
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130, stderr.decode()[-2000:]
            assert b"resume" in stderr and b"Traceback" not in stderr
            left = [p for p in psutil.process_iter(["cwd"]) if (p.info.get("cwd") or "").startswith(str(root))]
            assert left == []
        else:
            repaired = rsi("doctor", str(root))
            assert repaired.returncode == 0 and "PROBLEM" not in repaired.stdout, repaired.stdout
    final = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    check = rsi("doctor", str(root))
    assert check.returncode == 0 and "fixed" not in check.stdout and "PROBLEM" not in check.stdout, check.stdout
    exps = Ledger(ledger, readonly=True).experiments()
    assert len(exps) == 20 and all(e.state == "done" for e in exps)
    for e in exps:
        pairs = [(r.kind, r.seed) for r in e.runs]
        assert len(pairs) == len(set(pairs)), (e.id, pairs)
    kept_chain_is_measured(root, "p")
    assert overlapped(root)


class WaitsForAKeep(Scripted):
    """Its second proposal is made from the files it was given, but only once a worker has kept the first: a
    slow model answering after the branch moved."""

    def __init__(self, root: Path, proposals: list[Proposal]) -> None:
        super().__init__(proposals)
        self.root = root

    def propose(self, ctx: Context) -> Proposal | None:
        if len(self.proposals) == 1:
            ledger = Ledger(self.root / ".rsi" / "ledger.sqlite", readonly=True)
            for _ in range(600):
                if ledger.db.execute("SELECT 1 FROM experiments WHERE verdict = 'keep' AND id > 0").fetchone():
                    break
                time.sleep(0.1)
            ledger.close()
            text = ctx.files["train.py"]
            self.proposals = [Proposal({"train.py": text.replace("b = 0", "b = 2")}, "b = 2")]
        return super().propose(ctx)


def test_a_proposal_overtaken_by_a_keep_never_undoes_it(make_task: MakeTask) -> None:
    """A proposal is whole files from the head it was made on. If a worker keeps something meanwhile, the
    proposal is committed on its own head, not laid over the keep; winning, it is rebased like any other."""
    train = """\
        import os, random
        a = 0
        SCALE = 1.0
        b = 0
        random.seed(int(os.environ["RSI_SEED"]))
        print(f"loss: {(5 - a - b) * SCALE + random.gauss(0, 0.01):.6f}")
        """
    root = make_task(train=train, extra_toml="[executor]\nworkers = 2\n")
    text = (root / "train.py").read_text()
    proposer = WaitsForAKeep(root, [Proposal({"train.py": text.replace("a = 0", "a = 1")}, "a = 1"), Proposal({}, "")])
    Research(root, load_config(root), lambda ws, start: proposer, tag="w").run(Limits(max_experiments=10))
    final = git(root, "show", "rsi/w:train.py")
    assert "a = 1" in final and "b = 2" in final, final
    kept_chain_is_measured(root, "w")


def test_a_research_resumed_on_another_kind_of_machine_stops_with_one_line(make_task: MakeTask) -> None:
    """Noise estimates stay on one kind of machine: the first run records it, a resume elsewhere refuses."""
    root = make_task()
    first = rsi("run", "--max-experiments", "2", cwd=root, env={"RSI_NODE_KIND": "laptop"})
    assert first.returncode == 0, first.stderr
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    assert ledger.get("node_kind") == "laptop"
    assert {json.loads(r[0])["node_kind"] for r in ledger.db.execute("SELECT env FROM runs")} == {"laptop"}
    count = ledger.count()
    moved = rsi("run", "--max-experiments", "4", cwd=root, env={"RSI_NODE_KIND": "server"})
    assert moved.returncode == 2 and "Traceback" not in moved.stderr, moved.stderr
    assert "'laptop'" in moved.stderr and "'server'" in moved.stderr and len(moved.stderr.strip().splitlines()) == 1
    assert Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).count() == count  # nothing lost, nothing run
    back = rsi("run", "--max-experiments", "4", cwd=root, env={"RSI_NODE_KIND": "laptop"})
    assert back.returncode == 0, back.stderr

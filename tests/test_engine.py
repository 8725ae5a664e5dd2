"""The research loop end to end, on real git repositories and real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import MakeTask, git, rsi

from rsi.config import load_config
from rsi.engine import Limits, Research
from rsi.errors import UserError
from rsi.judge import Decision, Goal, Noise, SequentialJudge
from rsi.proposer import Context, KnobsProposer, Proposal, Proposer
from rsi.sandbox import bubblewrap_path
from rsi.status import status_json
from rsi.workspace import Workspace


def knobs_factory(root: Path) -> object:
    cfg = load_config(root)

    def factory(ws: Workspace, start: str) -> Proposer:
        files = {p: ws.read(start, p) for p in ws.files(start, cfg.task.editable)}
        return KnobsProposer(files, cfg.knobs, cfg.metric.goal)

    return factory


def research(root: Path, **kw: object) -> Research:
    return Research(root, load_config(root), knobs_factory(root), **kw)  # type: ignore[arg-type]


class Scripted:
    """A proposer that returns prepared proposals, to drive the loop into each branch of its logic."""

    name = "scripted"
    done_reason = "its script is done"
    overlap = False

    def __init__(self, proposals: list[Proposal]) -> None:
        self.proposals = list(proposals)
        self.seen: list[int] = []

    def propose(self, ctx: Context) -> Proposal | None:
        return self.proposals.pop(0) if self.proposals else None

    def observe(self, exp: object) -> None:
        self.seen.append(exp.id)  # type: ignore[attr-defined]


def scripted(root: Path, proposals: list[Proposal]) -> tuple[Research, Scripted]:
    p = Scripted(proposals)
    return Research(root, load_config(root), lambda ws, start: p), p


def test_research_improves_a_noisy_metric_with_two_constants(make_task: MakeTask) -> None:
    root = make_task()
    r = research(root, tag="t")
    r.run(Limits(max_experiments=30))
    s = status_json(r.ledger)
    assert len(s["experiments"]) == 30
    assert s["baseline"]["metric"] > 2.5  # (0.5-0.12)^2*10 + 0.1*16
    assert s["best"]["metric"] < s["baseline"]["metric"] / 3
    kept = [e for e in s["experiments"] if e["verdict"] == "keep"]
    assert kept and s["best"]["commit"] == kept[-1]["commit"]
    # both the lowercase and the uppercase constant were tuned
    touched = " ".join(e["hypothesis"] for e in s["experiments"])
    assert "lr " in touched and "DEPTH " in touched
    # the branch is the chain of kept commits on top of the start, each message carrying the metrics
    log = git(root, "log", "--format=%H %s", "rsi/t").splitlines()
    assert log[0].split()[0] == s["best"]["commit"]
    assert len(log) == len(kept) + 1
    body = git(root, "log", "-1", "--format=%B", "rsi/t")
    assert "loss:" in body and "->" in body
    # every candidate stays reachable, kept or not
    refs = git(root, "for-each-ref", "--format=%(refname)", "refs/rsi/candidates").split()
    assert len(refs) == sum(1 for e in s["experiments"][1:] if e["status"] != "rejected")
    # the user's branch and tree are untouched; no worktree is left behind
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert git(root, "status", "--porcelain") == ""
    assert len(git(root, "worktree", "list").splitlines()) == 1
    assert (root / ".rsi" / "ledger.sqlite").exists()


def test_baseline_runs_repeat_with_different_seeds_and_give_noise(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 4\n")
    r = research(root)
    r.run(Limits(max_experiments=1))
    base = r.ledger.experiment(0)
    assert base is not None
    seeds = [run.seed for run in base.runs]
    assert len(seeds) == 4 and len(set(seeds)) == 4
    s = status_json(r.ledger)
    assert s["noise_sd"] is not None and 0.002 < s["noise_sd"] < 0.05
    assert s["experiments"][0]["verdict"] == "baseline"


def test_candidate_seeds_pair_with_the_baseline(make_task: MakeTask) -> None:
    root = make_task()
    r = research(root)
    r.run(Limits(max_experiments=3))
    exps = r.ledger.experiments()
    assert exps[1].runs[0].seed == exps[0].runs[0].seed


@pytest.mark.parametrize("sandbox", [False, True])
def test_frozen_file_changed_by_a_run_is_tampered(make_task: MakeTask, sandbox: bool) -> None:
    """Unconfined, the change is caught after the run; in the sandbox the frozen file is read-only."""
    if sandbox and bubblewrap_path() is None:
        pytest.skip("bubblewrap is not installed")
    train = """\
    x = 1.0
    if x == 2.0:
        open("frozen.py", "a").write("# changed\\n")
    print("loss: 1.0")
    """
    toml = f"[judge]\nbaseline_repeats = 1\n[sandbox]\nenabled = {str(sandbox).lower()}\n"
    root = make_task(train=train, extra_toml=toml)
    edited = (root / "train.py").read_text().replace("x = 1.0", "x = 2.0")
    r, _ = scripted(root, [Proposal(edits={"train.py": edited}, hypothesis="x 1.0 -> 2.0")])
    r.run(Limits(max_experiments=2))
    base, e = r.ledger.experiments()
    assert base.status == "ok" and e.verdict == "discard"
    if sandbox:
        assert e.status == "crash" and "Read-only file system" in e.runs[0].stderr_tail
    else:
        assert e.status == "tampered" and "frozen.py" in e.runs[0].reason


def test_a_frozen_file_written_and_restored_is_tampered(make_task: MakeTask) -> None:
    """Same bytes at the end, but the file was rewritten: its change time gives it away."""
    train = """\
    import os
    x = 1.0
    if x == 2.0:
        saved = open("frozen.py").read()
        open("frozen.py", "w").write("VALUE = 2\\n")
        open("frozen.py", "w").write(saved)
    print("loss: 1.0")
    """
    root = make_task(train=train, extra_toml="[judge]\nbaseline_repeats = 1\n[sandbox]\nenabled = false\n")
    edited = (root / "train.py").read_text().replace("x = 1.0", "x = 2.0")
    r, _ = scripted(root, [Proposal(edits={"train.py": edited}, hypothesis="x 1.0 -> 2.0")])
    r.run(Limits(max_experiments=2))
    e = r.ledger.experiments()[1]
    assert e.status == "tampered" and "then restored" in e.runs[0].reason


def test_tracked_editable_file_restored_by_the_run_is_caught(make_task: MakeTask) -> None:
    train = """\
    x = 1.0
    src = open("train.py").read()
    open("train.py", "w").write(src + "# self-edit\\n")
    print("loss: 1.0")
    """
    root = make_task(train=train, extra_toml="[judge]\nbaseline_repeats = 1\n")
    r = research(root)
    with pytest.raises(UserError, match="baseline gave no metric"):
        r.run(Limits(max_experiments=3))
    base = r.ledger.experiment(0)
    assert base is not None and base.status == "tampered"


def test_proposals_outside_the_editable_files_are_rejected(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 1\n")
    proposals = [
        Proposal(edits={"frozen.py": "VALUE = 2\n"}, hypothesis="frozen"),
        Proposal(edits={"../outside.py": "x = 1\n"}, hypothesis="escape"),
        Proposal(edits={"other.py": "x = 1\n"}, hypothesis="not editable"),
        Proposal(edits={"train.py": (root / "train.py").read_text()}, hypothesis="no change"),
    ]
    r, p = scripted(root, proposals)
    r.run(Limits(max_experiments=10))
    exps = r.ledger.experiments()
    assert [e.status for e in exps[1:]] == ["rejected"] * 4
    assert [e.verdict for e in exps[1:]] == ["discard"] * 4
    assert "frozen" in exps[1].reason and "outside" in exps[2].reason and "not editable" in exps[3].reason
    assert "changes nothing" in exps[4].reason
    assert p.seen == [0, 1, 2, 3, 4]
    assert not (root.parent / "outside.py").exists()


def test_setup_cache_budget_and_holdout(make_task: MakeTask) -> None:
    train = """\
    import os, pathlib
    c = pathlib.Path(os.environ["RSI_CACHE_DIR"])
    data = (c / "data.txt").read_text()
    pathlib.Path("model.txt").write_text(data + os.environ["RSI_BUDGET_SECONDS"])
    scale = 2.0
    print(f"loss: {scale * float(os.environ['RSI_BUDGET_SECONDS'])}")
    """
    files = {
        "prep.py": "import os, pathlib\npathlib.Path(os.environ['RSI_CACHE_DIR'], 'data.txt').write_text('d')\n",
        "heldout.py": "import pathlib\nprint('test_loss:', len(pathlib.Path('model.txt').read_text()))\n",
    }
    extra = f"""
    [judge]
    baseline_repeats = 2
    [holdout]
    command = "{sys.executable} heldout.py"
    pattern = '^test_loss:\\s*(\\S+)'
    """
    root = make_task(train=train, files=files, extra_toml=extra)
    toml = (root / "rsi.toml").read_text()
    toml = toml.replace('timeout = "20s"', f'timeout = "20s"\nsetup = "{sys.executable} prep.py"\nbudget = "7s"')
    (root / "rsi.toml").write_text(toml)
    git(root, "commit", "-qam", "setup")
    r = research(root)
    r.run(Limits(max_experiments=12))
    s = status_json(r.ledger)
    assert s["baseline"]["metric"] == 14.0
    assert s["baseline"]["holdout"] == 2.0  # "d" + "7": the holdout read what the run produced
    for e in s["experiments"][1:]:
        assert (e["holdout"] is not None) == (e["verdict"] == "keep")
    assert any(e["verdict"] == "keep" for e in s["experiments"])
    assert r.ledger.get("setup_done") == "1"


def test_environment_is_recorded_and_secrets_never_reach_the_run(
    make_task: MakeTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = """\
    import os
    print("leak" if any("KEY" in k or "TOKEN" in k for k in os.environ) else "clean")
    print("loss:", 1.0 if os.environ.get("KEEP_ME") == "yes" else 2.0)
    """
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("GH_TOKEN", "ghp-secret")
    monkeypatch.setenv("KEEP_ME", "yes")
    root = make_task(train=train, extra_toml="[judge]\nbaseline_repeats = 1\n")
    r = research(root)
    r.run(Limits(max_experiments=2))  # no knob to tune: the loop stops after the baseline
    base = r.ledger.experiment(0)
    assert base is not None and base.runs[0].stdout_tail.startswith("clean")
    assert base.mean() == 1.0
    env = json.loads(r.ledger.db.execute("SELECT env FROM runs LIMIT 1").fetchone()[0])
    assert env["python"] and env["commit"] and env["cpu"]


def test_uncommitted_changes_to_editable_files_refuse_to_start(make_task: MakeTask) -> None:
    root = make_task()
    (root / "train.py").write_text("lr = 1\n")
    with pytest.raises(UserError, match=r"uncommitted changes to train\.py"):
        research(root)


def test_max_experiments_counts_the_whole_ledger_across_resumes(make_task: MakeTask) -> None:
    root = make_task()
    research(root).run(Limits(max_experiments=4))
    r = research(root)
    r.run(Limits(max_experiments=7))
    assert r.ledger.count() == 7
    r = research(root)
    r.run(Limits(max_experiments=3))  # already spent: nothing more
    assert r.ledger.count() == 7
    ids = [e.id for e in r.ledger.experiments()]
    assert ids == list(range(7))


def test_resume_keeps_its_tag_and_refuses_another(make_task: MakeTask) -> None:
    root = make_task()
    research(root, tag="a").run(Limits(max_experiments=2))
    with pytest.raises(UserError, match="rsi/a"):
        research(root, tag="b")
    r = research(root)
    assert r.tag == "a"


def test_cli_run_and_status(make_task: MakeTask) -> None:
    root = make_task()
    p = rsi("run", str(root), "--max-experiments", "8", "--tag", "cli")
    assert p.returncode == 0, p.stderr
    assert "rsi/cli" in p.stdout
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["task"] == "quad" and s["goal"] == "minimize" and s["metric"] == "loss"
    assert [e["id"] for e in s["experiments"]] == list(range(8))
    assert all(e["status"] == "ok" for e in s["experiments"])
    table = rsi("status", str(root))
    assert table.returncode == 0 and "baseline" in table.stdout


def test_a_keep_that_stops_holding_after_it_landed_is_reverted_on_the_branch(make_task: MakeTask) -> None:
    """A change whose gain holds on the seeds that kept it (screening on the baseline's, replication on
    experiment i's 10000 i + 1...4) and not on those it is measured with after it landed (its top-up, from
    10000 i + 5 on; runs cannot keep a count: the cache is read-only to them): a commit on the research branch
    undoes it (history kept), `rsi status` says so, `rsi doctor` agrees with the branch, and the research goes
    on from the champion before it."""
    drifting = """\
    import os, random
    lr = 0.5
    seed = int(os.environ["RSI_SEED"])
    random.seed(seed)
    loss = (lr - 0.12) ** 2 * 10 + random.gauss(0, 0.01)
    if lr != 0.5 and seed > 10000 and seed % 10000 >= 5:
        loss += 5.0
    print(f"loss: {loss:.6f}")
    """
    root = make_task(train=drifting)
    assert rsi("run", str(root), "--max-experiments", "6", "--tag", "drift").returncode == 0
    s = json.loads(rsi("status", str(root), "--json").stdout)
    undone = [e for e in s["experiments"] if e["revert_commit"]]
    assert undone and all(e["verdict"] == "discard" and e["reverted"] for e in undone)
    assert all("reverted after it landed: worse on" in e["reason"] for e in undone)
    first = undone[0]
    log = git(root, "log", "--format=%H %P %s", "rsi/drift").splitlines()
    revert = next(line.split() for line in log if line.startswith(first["revert_commit"]))
    assert revert[1] == first["commit"] and f"rsi: revert experiment {first['id']}," in " ".join(revert[2:])
    # the revert holds the tree of the start (nothing was kept before it), and the keep stays in history
    tree = git(root, "rev-parse", f"{first['revert_commit']}^{{tree}}", "main^{tree}").split()
    assert tree[0] == tree[1] and any(line.startswith(first["commit"]) for line in log)
    table = rsi("status", str(root)).stdout
    assert f" {first['id']} │" in table and "discard (reverted)" in table
    doctor = rsi("doctor", str(root))
    assert doctor.returncode == 0 and "branch rsi/drift: at the last keep (or its revert)" in doctor.stdout
    # the branch by name is its champion, even where it points at a revert commit; an older revert is named
    branch = rsi("verify", "rsi/drift", "--dir", str(root), "--runs", "2")
    assert branch.returncode in (0, 1) and branch.stdout.startswith("experiment "), branch.stderr
    if git(root, "rev-parse", "rsi/drift").strip() != first["revert_commit"]:
        older = rsi("verify", first["revert_commit"][:10], "--dir", str(root))
        assert older.returncode == 2 and f"reverted experiment {first['id']}: verify the experiment" in older.stderr


def test_time_budget_stops_starting_experiments(make_task: MakeTask) -> None:
    slow = "import time\nlr = 0.5\ntime.sleep(0.2)\nprint(f'loss: {(lr - 0.1) ** 2}')\n"
    root = make_task(train=slow, extra_toml="[judge]\nbaseline_repeats = 2\n")
    r = research(root)
    r.run(Limits(time_budget_s=2.0))  # no experiment limit: only the clock stops it
    n = r.ledger.count()
    assert 2 <= n <= 12  # about (2 s - baseline) / 0.25 s
    # all decided but perhaps the last, cut between two of its runs
    assert all(e.state == "done" for e in r.ledger.experiments()[:-1])


class Undecided(SequentialJudge):
    """Never sure after screening: a candidate takes every screening run it is allowed."""

    def decide(
        self,
        candidate: Sequence[float | None],
        champion: Sequence[float],
        goal: Goal,
        noise: Noise | None,
        deletes_code: bool = False,
    ) -> Decision:
        return Decision("more", "never sure")


@pytest.mark.parametrize("workers", [1, 2])
def test_the_time_budget_stops_an_experiment_between_two_runs_and_the_next_run_resumes_it(
    make_task: MakeTask, workers: int
) -> None:
    slow = "import time\nlr = 0.5\ntime.sleep(0.1)\nprint(f'loss: {(lr - 0.1) ** 2}')\n"
    toml = f"[judge]\nbaseline_repeats = 2\nmax_repeats = 100\n[executor]\nworkers = {workers}\n"
    root = make_task(train=slow, extra_toml=toml)
    said: list[str] = []
    r = Research(
        root,
        load_config(root),
        knobs_factory(root),  # type: ignore[arg-type]
        judge=Undecided(max_repeats=100),
        listener=lambda event, exp, message: said.append(message),
    )
    r.run(Limits(time_budget_s=3.0))  # 100 screening runs of 0.1 s and more cannot fit
    first = r.ledger.experiments()
    r.ledger.close()
    cut = first[1:]  # every candidate: one per worker
    assert first[0].state == "done" and len(cut) == workers
    assert all(e.state == "proposed" and e.interrupts == 0 for e in cut)
    screened = {e.id: [x.seed for x in sorted(e.runs, key=lambda x: x.id) if x.kind == "screen"] for e in cut}
    assert all(1 <= len(seeds) < 100 for seeds in screened.values())
    for e in cut:
        assert any(m.startswith(f"#{e.id} left unfinished after ") and "time budget ran out" in m for m in said)
    again = research(root)  # the default judge decides them from the runs they have, and more if they need them
    again.run(Limits(max_experiments=len(first)))
    for e in cut:
        resumed = again.ledger.experiment(e.id)
        assert resumed is not None and resumed.state == "done" and resumed.verdict in ("keep", "discard")
        seeds = [x.seed for x in sorted(resumed.runs, key=lambda x: x.id) if x.kind == "screen"]
        assert seeds[: len(screened[e.id])] == screened[e.id] and len(set(seeds)) == len(seeds)  # none repeated


class SlowModel(Scripted):
    """Proposes ahead (as LLM proposers do) and its second proposal does not come until the test allows it: a
    model that takes longer than the time budget has left."""

    overlap = True

    def __init__(self, proposals: list[Proposal]) -> None:
        super().__init__(proposals)
        self.answer = threading.Event()
        self.calls, self.answered = 0, 0

    def propose(self, ctx: Context) -> Proposal | None:
        self.calls += 1
        if self.calls > 1:
            self.answer.wait(60)
        self.answered += 1
        return super().propose(ctx)


def test_the_time_budget_does_not_wait_for_a_proposal_made_ahead(make_task: MakeTask) -> None:
    """A proposal made while the last experiment ran is not waited for once the time budget is spent: the
    research ends, and the next `rsi run` has the whole ledger to show the proposer."""
    slow = "import time\nlr = 0.5\ntime.sleep(0.2)\nprint(f'loss: {(lr - 0.1) ** 2}')\n"
    root = make_task(train=slow, extra_toml="[judge]\nbaseline_repeats = 2\n")
    text = (root / "train.py").read_text()
    model = SlowModel([Proposal({"train.py": text.replace("lr = 0.5", f"lr = {v}")}, f"lr {v}") for v in (0.3, 0.2)])
    said: list[str] = []
    r = Research(root, load_config(root), lambda ws, start: model, listener=lambda e, x, m: said.append(m))
    try:
        r.run(Limits(time_budget_s=2.0))
        assert model.calls == 2 and model.answered == 1  # it returned while the model was still thinking
        assert r.ledger.count() == 2 and said[-1] == "the time budget ran out"
        model.answer.set()  # the model answers at last: the same research runs on (its proposer one call at a time)
        r.run(Limits(max_experiments=3))
        assert model.calls == 3 and model.answered == 3
    finally:
        model.answer.set()


@pytest.mark.slow
def test_a_metric_that_is_pure_noise_keeps_nothing(make_task: MakeTask) -> None:
    noise_only = """\
    import os, random
    lr = 0.5
    width = 64
    dropout = 0.1
    random.seed(os.environ["RSI_SEED"] + open(__file__).read())  # unrelated to what the knobs say
    print(f"loss: {random.gauss(1.0, 0.05):.6f}")
    """
    root = make_task(train=noise_only)
    r = research(root)
    r.run(Limits(max_experiments=30))
    s = status_json(r.ledger)
    assert len(s["experiments"]) == 30
    # Each null candidate is kept with probability under 1% (measured 0.46% in the test below), so a research
    # of 29 keeps nothing about 87% of the time and two or more under 1% of the time; any keep replicated.
    keeps = [e for e in s["experiments"] if e["verdict"] == "keep"]
    assert len(keeps) <= 1
    assert all(e["reason"].startswith("replicated on ") for e in keeps)
    best = keeps[-1]["commit"] if keeps else s["experiments"][0]["commit"]
    assert git(root, "rev-parse", "rsi/" + s["tag"]).strip() == s["best"]["commit"] == best


def test_pure_noise_researches_keep_under_one_percent_of_their_candidates() -> None:
    """Forty in-process researches of a task whose metric ignores the code, 30 experiments each, with the
    shipped program: at a true rate of 1% the 1,160 null candidates would give about 12 keeps."""
    import functools
    import hashlib
    import random

    from rsi.engine import default_judge, in_process
    from rsi.meta import inner_config
    from rsi.program import default_program

    files = {"p.py": "lr = 0.5  # rsi: range(0.01, 1.0)\nwidth = 64  # rsi: range(8, 256)\ndrop = 0.1\n"}

    def noise(salt: int, files: dict[str, str], seed: int) -> float:
        key = hashlib.sha256(f"{files['p.py']}|{seed}|{salt}".encode()).digest()
        return 1.0 + 0.05 * random.Random(key).gauss(0.0, 1.0)

    cfg = inner_config(default_program(), editable="p.py")
    keeps = candidates = 0
    for salt in range(40):
        proposer = KnobsProposer(files, cfg.knobs, "minimize", seed=salt)
        found = in_process(cfg, files, functools.partial(noise, salt), proposer, judge=default_judge(cfg))
        found.run(Limits(max_experiments=30))
        exps = found.ledger.experiments()
        candidates += len(exps) - 1
        keeps += sum(e.verdict == "keep" for e in exps)
    assert candidates == 40 * 29
    assert keeps < 0.01 * candidates, f"{keeps} of {candidates} null candidates kept"


def test_a_second_orchestrator_on_the_same_task_is_refused(make_task: MakeTask) -> None:
    root = make_task(train="import time\nlr = 0.5\ntime.sleep(30)\nprint('loss: 1')\n")
    first = subprocess.Popen([sys.executable, "-m", "rsi", "run", str(root)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if (root / ".rsi" / "lock").exists() and (root / ".rsi" / "lock").read_text():
                break
            time.sleep(0.1)
        second = rsi("run", str(root))
        assert second.returncode == 2 and "another rsi" in second.stderr
    finally:
        first.kill()
        first.wait()
    assert rsi("status", str(root), "--json").returncode == 0  # the ledger is intact


@pytest.mark.parametrize("workers", [1, 2])  # with two, both retests run at once
def test_a_change_retested_twice_on_the_same_champion_gets_new_seeds_and_is_told_as_it_reads_there(
    make_task: MakeTask, workers: int
) -> None:
    root = make_task()
    toml = root / "rsi.toml"  # the editable glob matches the frozen file too: it is no part of any change
    toml.write_text(toml.read_text().replace('editable = ["train.py"]', 'editable = ["*.py"]'))
    git(root, "commit", "-qam", "glob")
    text = (root / "train.py").read_text()
    better, worse = (text.replace("lr = 0.5", f"lr = {lr}") for lr in (0.3, 0.6))
    # the second proposal's text was written against the start: on the champion #1 it moves lr from 0.3
    proposals = [Proposal(edits={"train.py": better}, hypothesis="lr 0.5 -> 0.3")]
    proposals.append(Proposal(edits={"train.py": worse}, hypothesis="lr 0.5 -> 0.6"))
    r, _ = scripted(root, proposals)
    r.run(Limits(max_experiments=3))
    assert [e.verdict for e in r.ledger.experiments()] == ["baseline", "keep", "discard"]
    # `rsi retest 2` twice, with no research running: both wait for the next `rsi run`
    for number in ("2", "#2"):  # as verify and fork take it
        assert rsi("retest", number, str(root), "--repeats", "3").returncode == 0
    assert json.loads(rsi("status", str(root), "--json").stdout)["retests_waiting"] == [{"id": 2, "repeats": 3}] * 2
    assert "retests waiting: #2 (up to 3 runs), #2 (up to 3 runs)" in rsi("status", str(root)).stdout
    r.ledger.close()
    toml.write_text(toml.read_text() + f"\n[executor]\nworkers = {workers}\n")
    git(root, "commit", "-qam", "workers")
    again, _ = scripted(root, [])
    again.run(Limits(max_experiments=5))
    retests = [e for e in again.ledger.experiments() if e.proposer == "retest"]
    assert [e.parent for e in retests] == [1, 1] and all(e.state == "done" for e in retests)
    assert all("frozen.py" not in e.diff and e.diff == retests[0].diff for e in retests)
    assert all(e.hypothesis == "lr 0.3 -> 0.6 (retest of #2 on #1, up to 3 runs)" for e in retests)
    first, second = ({x.seed for x in e.runs if x.kind == "screen"} for e in retests)
    original = {x.seed for x in again.ledger.experiment(2).runs if x.kind == "screen"}  # type: ignore[union-attr]
    assert first and second and not first & second  # the same seeds would only give the same runs again
    assert not (first | second) & original

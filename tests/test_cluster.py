"""Research on a real local Ray cluster: runs as Ray tasks on a node with its own copy of the repository, and a
Ray worker killed in the middle of a run, after which the run is queued again, recorded, and nothing is lost."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import MakeTask, commit_all, git
from test_workers import kept_chain_is_measured

from rsi.config import load_config
from rsi.engine import Limits, Research
from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.proposer import KnobsProposer, Proposer
from rsi.workspace import Workspace

ray = pytest.importorskip("ray")

PAUSED = """\
import os, random, time
lr = 0.5
DEPTH = 3
time.sleep(0.2 if (lr, DEPTH) == (0.5, 3) else 1.5)
random.seed(int(os.environ["RSI_SEED"]))
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local Ray cluster of 2 CPUs; its nodes keep their copies of the repository under their own folder."""
    nodes = tmp_path / "nodes"
    monkeypatch.setenv("RSI_RAY_DIR", str(nodes))  # before ray.init: the workers inherit it
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield nodes
    finally:
        ray.shutdown()


def research(root: Path, limits: Limits) -> Research:
    cfg = load_config(root)

    def knobs(ws: Workspace, start: str) -> Proposer:
        files = {p: ws.read(start, p) for p in ws.files(start, cfg.task.editable)}
        return KnobsProposer(files, cfg.knobs, cfg.metric.goal)

    found = Research(root, cfg, knobs, tag="ray")  # type: ignore[arg-type]
    found.run(limits)
    return found


@pytest.mark.slow
def test_a_task_researched_through_ray(make_task: MakeTask, cluster: Path) -> None:
    root = make_task(train=PAUSED, extra_toml='[executor]\nkind = "ray"\n')
    research(root, Limits(max_experiments=6))
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    assert len(exps) == 6 and all(e.state == "done" for e in exps)
    assert exps[0].valid() and any(e.verdict == "keep" for e in exps)
    envs = [json.loads(r[0]) for r in ledger.db.execute("SELECT env FROM runs")]
    assert all(env["executor"] == "ray" and env["node"] for env in envs)
    assert all(env["sandbox"] for env in envs)  # measured on the node with the local runs' code
    kept_chain_is_measured(root, "ray")
    # the node built its own repository from the bundle and the patches: the driver's commits, rebuilt
    (node_repo,) = cluster.glob("*/repo")
    rebuilt = git(node_repo, "for-each-ref", "--format=%(refname)", "refs/rsi/driver/").split()
    measured = {e.commit_sha for e in exps if e.commit_sha}
    assert {ref.rsplit("/", 1)[1] for ref in rebuilt} == measured
    for e in exps:
        if e.commit_sha:
            ref = f"refs/rsi/driver/{e.commit_sha}"
            assert git(node_repo, "rev-parse", f"{ref}^{{tree}}") == git(root, "rev-parse", f"{e.commit_sha}^{{tree}}")


def _ray_worker_of(proc: psutil.Process) -> psutil.Process | None:
    for parent in proc.parents():
        if "ray::" in " ".join(parent.cmdline()) or "default_worker" in " ".join(parent.cmdline()):
            return parent
    return None


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_is_queued_again_and_nothing_is_lost(make_task: MakeTask, cluster: Path) -> None:
    root = make_task(train=PAUSED, extra_toml='[executor]\nkind = "ray"\nworkers = 1\n')
    killed: list[int] = []

    def kill_one_worker() -> None:
        """Waits for a candidate's run to be under way, then SIGKILLs the Ray worker process running it."""
        ledger = root / ".rsi" / "ledger.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ledger.exists() and Ledger(ledger, readonly=True).count() > 1:  # past the baseline
                for proc in psutil.process_iter(["cmdline"]):
                    try:
                        if "train.py" not in " ".join(proc.info.get("cmdline") or []):
                            continue
                        where = Path(f"/proc/{proc.pid}/cwd")
                        if not where.resolve().is_relative_to(cluster.resolve()):
                            continue  # another test's cluster (tests run side by side): not ours to kill
                        worker = _ray_worker_of(proc)
                        if worker is None or "lr = 0.5\nDEPTH = 3\n" in (where / "train.py").read_text():
                            continue  # the baseline's code (the champion's runs) sleeps 0.2 s: over before a kill
                        time.sleep(0.5)  # a candidate's run sleeps 1.5 s: well under way, not over
                        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                            continue
                        worker.send_signal(signal.SIGKILL)
                        killed.append(worker.pid)
                        return
                    except (psutil.Error, OSError):  # it ended while looked at
                        continue
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    research(root, Limits(max_experiments=5))
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen running a candidate"
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    assert len(exps) == 5 and all(e.state == "done" for e in exps)
    requeued = [r for e in exps for r in e.runs if r.reason.startswith("re-queued once")]
    assert len(requeued) == 1, [(r.experiment, r.status, r.reason) for e in exps for r in e.runs]
    assert requeued[0].status == "ok" and requeued[0].metric is not None
    for e in exps:
        pairs = [(r.kind, r.seed) for r in e.runs]
        assert len(pairs) == len(set(pairs)), (e.id, pairs)
    # nothing is left running in the node's folders
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cwd"]) if (p.info.get("cwd") or "").startswith(str(cluster))]
    assert left == []


@pytest.fixture
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A local Ray cluster of two kinds of node: a head of kind 'small' (1 CPU), a node of kind 'big' (2 CPUs)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RSI_RAY_DIR", str(tmp_path / "nodes"))
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": {"RSI_NODE_KIND": "small"}})
    made.add_node(num_cpus=2, env_vars={"RSI_NODE_KIND": "big"})
    try:
        ray.init(address=made.address, include_dashboard=False, log_to_driver=False)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
def mixed(made: Any, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The two kinds' node ids, and the nodes' folder."""
    ids = {n["Resources"]["CPU"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    return tmp_path / "nodes", {"small": ids[1.0], "big": ids[2.0]}


@pytest.mark.slow
def test_runs_stay_on_one_kind_of_node_and_their_logs_come_back(
    make_task: MakeTask, mixed: tuple[Path, dict[str, str]]
) -> None:
    """Comparisons stay within one kind of node: the kind with the most CPUs by default, or the configured one;
    every run goes to a node of that kind, records it, and sends its log files back to the driver."""
    _, ids = mixed
    for chosen, toml in (("big", ""), ("small", 'node_kind = "small"\n')):
        root = make_task(name=chosen, train=PAUSED, extra_toml=f'[executor]\nkind = "ray"\n{toml}')
        found = research(root, Limits(max_experiments=3))
        assert f"of kind '{chosen}'" in found.measurer.note
        ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
        assert ledger.get("node_kind") == chosen
        envs = [json.loads(r[0]) for r in ledger.db.execute("SELECT env FROM runs")]
        assert len(envs) >= 3 and {(e["node_kind"], e["node"]) for e in envs} == {(chosen, ids[chosen])}
        for e in ledger.experiments():
            for r in e.runs:
                logs = root / ".rsi" / "logs" / str(e.id) / f"{r.kind}-{r.seed}"
                assert "loss:" in (logs / "stdout.log").read_text(), logs
    # a configured kind that is not the one the research was measured on: one clear error, nothing run
    cfg = load_config(root)
    cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"node_kind": "big"})})
    with pytest.raises(UserError, match="measured on 'small'"):
        Research(root, cfg, lambda ws, start: KnobsProposer({}, cfg.knobs, cfg.metric.goal), tag="ray")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_when_the_last_node_of_its_kind_dies_the_research_stops_and_resumes_on_a_new_one(
    make_task: MakeTask, made: Any
) -> None:
    """The only node of the research's kind dies in the middle of a candidate's run: the run is lost, and with
    no node of the kind left the research stops with one line (not a crash charged to the candidate); what was
    recorded stays, and once a node of the kind is back the research resumes and finishes."""
    root = make_task(train=PAUSED, extra_toml='[executor]\nkind = "ray"\nworkers = 1\n')
    (big,) = made.worker_nodes
    removed: list[bool] = []

    def remove_mid_run() -> None:
        ledger = root / ".rsi" / "ledger.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ledger.exists():
                seen = Ledger(ledger, readonly=True)
                running = seen.db.execute("SELECT count(*) FROM runs WHERE state = 'running' AND experiment > 0")
                under_way = running.fetchone()[0]
                seen.close()
                if under_way:
                    time.sleep(0.3)
                    made.remove_node(big)
                    removed.append(True)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_mid_run, daemon=True)
    killer.start()
    with pytest.raises(UserError, match=r"no node of this research's kind \('big'\) .*add one and resume"):
        research(root, Limits(max_experiments=4))
    killer.join(timeout=5)
    assert removed, "no candidate's run was seen under way"
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    assert exps[0].state == "done" and sum(r.status == "ok" for r in exps[0].runs) >= 3
    assert not [r for e in exps for r in e.runs if r.status == "crash"]  # the loss is nobody's verdict
    ledger.close()
    made.add_node(num_cpus=2, env_vars={"RSI_NODE_KIND": "big"})
    research(root, Limits(max_experiments=4))
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    exps = ledger.experiments()
    assert len(exps) == 4 and all(e.state == "done" for e in exps)
    assert not [r for e in exps for r in e.runs if r.status == "crash"]


@pytest.mark.slow
def test_a_setup_that_fails_on_the_node_is_a_crash_that_shows_why(make_task: MakeTask, cluster: Path) -> None:
    root = make_task(extra_toml='[executor]\nkind = "ray"\n')
    toml = (root / "rsi.toml").read_text()
    broken = "[task]\nsetup = \"sh -c 'echo no corpus here >&2; exit 3'\"\n"
    (root / "rsi.toml").write_text(toml.replace("[task]\n", broken, 1))
    commit_all(root, "a setup that fails")
    with pytest.raises(UserError, match=r"the baseline gave no metric .*the setup command failed on this node"):
        research(root, Limits(max_experiments=1))
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    runs = [r for e in ledger.experiments() for r in e.runs]
    assert runs and all(r.status == "crash" and "on the Ray node" in r.reason for r in runs)
    assert all("setup command failed" in r.stderr_tail for r in runs), runs[0].stderr_tail

"""Runs on a Ray cluster (`[executor] kind = "ray"`, `pip install rsi[ray]`): nodes that share no filesystem.

The ledger, the judge and the proposers stay on the driver; each run of the task is one Ray task with
`num_cpus` / `num_gpus`. The task gets the research's start commit once per node, as a git bundle in Ray's
object store, and the run's commit as a patch against it; on the node it builds the worktree and measures
it with the same code as a local run (sandbox, limits, evaluator, tamper checks), into a small ledger of the
node's own, and sends the run's record and logs back. Runs go only to nodes of the research's kind
(environment.node_kind): a time budget buys the same work only there. A holdout run is scheduled on the
node that holds the outputs of the run before it. A run whose Ray worker or node dies is queued once more
and the loss is written in its reason; a second loss makes it a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rsi import interrupt
from rsi.config import Config
from rsi.environment import hold_kind, node_kind
from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.measure import HOLDOUT, SubprocessMeasurer
from rsi.pruning import Reference
from rsi.runner import kill_orphan
from rsi.slots import THREAD_VARIABLES
from rsi.workspace import Workspace

ATTEMPTS = 2  # a run lost with its worker or node is queued once more
LOG_BYTES = 4 << 20  # of each log file a node sends back: its end
REFRESH_S = 10.0  # how old the driver's list of nodes may be before a run is placed
RUN_FIELDS = (
    "status",
    "metric",
    "reason",
    "returncode",
    "duration_s",
    "peak_memory_mb",
    "stdout_tail",
    "stderr_tail",
    "progress",
    "cpu_s",
    "busy",
)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("executor.kind = 'ray' needs Ray: pip install 'rsi[ray]'") from None
    return ray


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a node needs for one run."""

    research: str  # names the node's copy of the repository
    bundle: Any  # ObjectRef of the start commit's git bundle
    start: str
    commit: str  # the driver's commit: the node's copy is keyed by it
    patch: bytes  # `git diff --binary start commit`
    name: str  # the worktree: one run of it at a time
    exp_id: int
    kind: str
    seed: int
    cfg: Config
    frozen: dict[str, str]
    against: Reference | None = None  # the champion's trajectories, for early stopping


class RayMeasurer:
    """The `Measurer` of a research whose runs happen on a Ray cluster."""

    def __init__(self, ws: Workspace, cfg: Config, ledger: Ledger, frozen: dict[str, str]) -> None:
        ray = _ray()
        self.ws, self.cfg, self.ledger, self.frozen = ws, cfg, ledger, frozen
        if not ray.is_initialized():
            try:
                ray.init(
                    address=cfg.executor.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = cfg.executor.address or "a new local Ray instance"
                raise UserError(f"cannot reach Ray at {where}: {e}") from None
        self.start = ledger.get("start_commit") or ws.head()
        self.research = hashlib.sha256(f"{ws.root}\0{self.start}".encode()).hexdigest()[:16]
        ws.set_ref("refs/rsi/base", self.start)
        self.bundle = ray.put(ws.git_bytes("bundle", "create", "-", "refs/rsi/base"))
        self.nodes: dict[str, str] = {}  # worktree name -> the node that ran its last run
        ex = cfg.executor
        self.resources = {"num_cpus": ex.cpus_per_experiment or 1, "num_gpus": ex.gpus_per_experiment if ex.gpus else 0}
        self.kinds: dict[str, str] = {}  # node id -> its kind, asked once per node
        self.alive: dict[str, dict[str, float]] = {}  # node id -> its resources
        self.seen = 0.0
        self.kind = ledger.get("node_kind") or ex.node_kind or self._largest_kind()
        hold_kind(ledger, ex.node_kind or self.kind, "executor.node_kind")
        self.eligible()

    def _refresh(self) -> None:
        """The alive nodes, and the kind of each new one (a probe task pinned to it)."""
        ray = _ray()
        self.alive = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}
        new = [node for node in self.alive if node not in self.kinds]
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
        probes = {
            node: _kind_task().options(num_cpus=0, scheduling_strategy=strategy(node_id=node, soft=False)).remote()
            for node in new
        }
        for node, ref in probes.items():
            try:
                self.kinds[node] = ray.get(ref, timeout=120)
            except ray.exceptions.RayError:  # died meanwhile, or too busy to answer: asked again next time
                continue
        self.seen = time.monotonic()

    def _largest_kind(self) -> str:
        self._refresh()
        cpus: dict[str, float] = {}
        for node, kind in self.kinds.items():
            cpus[kind] = cpus.get(kind, 0) + self.alive.get(node, {}).get("CPU", 0)
        return max(sorted(cpus), key=cpus.__getitem__, default=node_kind())

    def eligible(self, refresh: bool = False) -> list[str]:
        """The alive nodes of the research's kind."""
        if refresh or time.monotonic() - self.seen > REFRESH_S:
            self._refresh()
        nodes = sorted(node for node in self.alive if self.kinds.get(node) == self.kind)
        if not nodes:
            others = sorted(set(self.kinds[n] for n in self.alive if n in self.kinds))
            raise UserError(
                f"no node of this research's kind ({self.kind!r}) is in the Ray cluster (it has {others}); "
                "add one and resume, or start a new research (a fresh clone, or `rsi fork`) with executor.node_kind set"
            )
        return nodes

    @property
    def has_holdout(self) -> bool:
        return self.cfg.holdout is not None

    @property
    def capacity(self) -> int:
        """Runs the cluster can hold at once: the default number of workers."""
        fits = 0
        for node in self.eligible():
            have = self.alive[node]
            n = have.get("CPU", 0) // self.resources["num_cpus"]
            if self.resources["num_gpus"]:
                n = min(n, have.get("GPU", 0) // self.resources["num_gpus"])
            fits += int(n)
        return max(1, fits)

    @property
    def note(self) -> str:
        nodes = self.eligible()
        cpus = sum(self.alive[n].get("CPU", 0) for n in nodes)
        gpus = sum(self.alive[n].get("GPU", 0) for n in nodes)
        others = len(self.alive) - len(nodes)
        return (
            f"Ray cluster: {len(nodes)} node(s) of kind {self.kind!r} with {cpus:g} CPUs, {gpus:g} GPUs"
            + (f" ({others} node(s) of other kinds not used)" if others else "")
            + f"; each run takes {self.resources['num_cpus']} CPU(s), {self.resources['num_gpus']} GPU(s)"
        )

    def setup(self, wt: Path, command: str, timeout: float) -> str:
        return ""  # each node runs the setup before its first run: nodes share no cache

    def measure(
        self, wt: Path, exp_id: int, commit: str, kind: str, seed: int, against: Reference | None = None
    ) -> None:
        ray = _ray()
        patch = self.ws.git_bytes("diff", "--binary", "--no-renames", self.start, commit)
        job = Job(
            self.research,
            self.bundle,
            self.start,
            commit,
            patch,
            wt.name,
            exp_id,
            kind,
            seed,
            self.cfg,
            self.frozen,
            against,
        )
        env = {"executor": "ray", "commit": commit}
        run_id = self.ledger.start_run(exp_id, kind, seed, env)
        lost: list[str] = []
        record: dict[str, Any] | None = None
        while record is None and len(lost) < ATTEMPTS:
            options: dict[str, Any] = {**self.resources, "max_retries": 0}
            if kind == HOLDOUT and wt.name in self.nodes:  # its inputs are the outputs left on that node
                strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
                options["scheduling_strategy"] = strategy(node_id=self.nodes[wt.name], soft=False)
            else:
                options["label_selector"] = {"ray.io/node-id": f"in({','.join(self.eligible(refresh=bool(lost)))})"}
            ref = _remote().options(**options).remote(job)
            try:
                record = _wait(ray, ref)
            except ray.exceptions.RayTaskError as e:  # rsi's code failed on the node (a failed setup): a crash
                failed = str(e).strip().splitlines()
                record = {"node": "", "env": {}, "run": {k: None for k in RUN_FIELDS}}
                record["run"].update(
                    status="crash",
                    progress="[]",
                    stdout_tail="",
                    stderr_tail="\n".join(failed[-40:]),  # the node's traceback: what `rsi show` prints
                    reason=f"on the Ray node: {failed[-1] if failed else e}",
                )
            except ray.exceptions.RayError as e:  # the worker or its node died: the run is lost, not failed
                lost.append(f"{type(e).__name__}")
                if kind == HOLDOUT:
                    break
            if record is not None and record.get("kind", self.kind) != self.kind:  # a node's kind changed
                self.kinds.pop(record["node"], None)
                lost.append(f"ran on a node of kind {record['kind']!r}")
                record = None
        if record is None:
            self.eligible(refresh=True)  # no node of the kind left: the research stops, the run is nobody's crash
            why = f"lost {len(lost)} time(s) with its Ray worker or node ({', '.join(lost)})"
            fields: dict[str, Any] = {"status": "crash", "reason": why}
        else:
            self.nodes[wt.name] = record["node"]
            fields = {k: record["run"].get(k) for k in RUN_FIELDS}  # (a node's older rsi may lack some)
            # a node runs several of the research's runs at once on cores none of them is pinned to: there,
            # the others' load is mostly the research's own, which `busy` cannot tell from another job's
            fields["busy"] = None
            if lost:
                fields["reason"] = f"re-queued once: the first attempt was lost ({lost[0]}). " + (
                    fields["reason"] or ""
                )
            self._keep_logs(exp_id, kind, seed, record.get("logs", {}))
            node = record["env"]  # the node's machine and sandbox; the commit stays the driver's
            fields["env"] = json.dumps({**node, **env, "node": record["node"], "node_commit": node.get("commit")})
        with self.ledger.transaction():
            self.ledger.finish_run(run_id, **fields)

    def _keep_logs(self, exp_id: int, kind: str, seed: int, logs: dict[str, bytes]) -> None:
        """The node's log files of the run, where a local run's would be."""
        where = self.ws.state / "logs" / str(exp_id) / f"{kind}-{seed}"
        for name, data in logs.items():
            target = where / name
            if target.resolve().is_relative_to(where.resolve()):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


def _wait(ray: Any, ref: Any) -> dict[str, Any]:
    """ray.get that Ctrl-C (and a stop of the research) interrupts: the task is cancelled with its run."""
    while True:
        ready, _ = ray.wait([ref], timeout=0.5)
        if ready:
            result: dict[str, Any] = ray.get(ref)
            return result
        try:
            interrupt.check()
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            raise


_REMOTE: dict[str, Any] = {}


def _remote() -> Any:
    if "run" not in _REMOTE:
        _REMOTE["run"] = _ray().remote(run_on_node)
    return _REMOTE["run"]


def _kind_task() -> Any:
    if "kind" not in _REMOTE:
        _REMOTE["kind"] = _ray().remote(node_kind)
    return _REMOTE["kind"]


def node_dir(research: str) -> Path:
    base = Path(os.environ.get("RSI_RAY_DIR") or Path.home() / ".cache" / "rsi" / "ray")
    return base / research


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Ray runs several tasks on a node in separate processes: the node's repository changes one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_on_node(job: Job) -> dict[str, Any]:
    """The Ray task: the node's copy of the repository, the run's worktree, the run, its record."""
    here = node_dir(job.research)
    root = here / "repo"
    ws = Workspace(root)
    with _locked(here / "lock"):
        if not (root / ".git").exists():
            _clone(root, job)
        ledger = Ledger(here / "runs" / f"{job.name}.sqlite")
        orphans = ledger.interrupted_runs()  # left by a worker killed while it ran this worktree
        for _, _, pid, started in orphans:
            kill_orphan(pid, started)
        with ledger.transaction():
            ledger.drop_interrupted(orphans)
        threads = str(int(job.cfg.executor.cpus_per_experiment or 1))
        threads_env = {name: threads for name in THREAD_VARIABLES}  # the task's own settings win
        task = job.cfg.task.model_copy(update={"env": {**threads_env, **job.cfg.task.env}})
        cfg = job.cfg.model_copy(update={"task": task})
        measurer = SubprocessMeasurer(ws, cfg, ledger, job.frozen)
        if cfg.task.setup and not (here / "setup-done").exists():
            setup = ws.add_worktree("setup", job.start)
            failure = measurer.setup(setup, cfg.task.setup, 3600.0)
            ws.remove_worktree("setup")
            if failure:
                raise RuntimeError(f"the setup command failed on this node: {failure}")
            (here / "setup-done").touch()
    try:
        with _locked(here / "lock"):  # two tasks may build the same commit; worktrees share git's list of them
            commit = _node_commit(ws, job)
            wt = ws.worktree_dir(job.name)
            if job.kind != HOLDOUT or not wt.exists():
                wt = ws.add_worktree(job.name, commit)
        measurer.measure(wt, job.exp_id, commit, job.kind, job.seed, job.against)
        row = ledger.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        ledger.close()  # Ray reuses its worker processes
    ray = _ray()
    logs = ws.state / "logs" / str(job.exp_id) / f"{job.kind}-{job.seed}"
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "kind": node_kind(),
        "run": dict(row),
        "env": json.loads(row["env"]),
        "logs": {str(f.relative_to(logs)): _tail(f) for f in sorted(logs.rglob("*")) if f.is_file()},
    }


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - LOG_BYTES))
        return f.read()


def _clone(root: Path, job: Job) -> None:
    ray = _ray()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".bundle") as bundle:
        bundle.write(ray.get(job.bundle))
        bundle.flush()
        for args in (["init", "-q"], ["fetch", "-q", bundle.name, "refs/rsi/base:refs/rsi/base"]):
            subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _node_commit(ws: Workspace, job: Job) -> str:
    """The driver's commit rebuilt here from the start commit and the patch, once per commit and node, with a
    private index and no checkout: tasks on one node build their commits side by side."""
    ref = f"refs/rsi/driver/{job.commit}"
    known = ws.ref(ref)
    if known:
        return known
    with tempfile.TemporaryDirectory(prefix="rsi-index-") as tmp:
        index = Path(tmp) / "index"
        ws.git("read-tree", job.start, index=index)
        if job.patch:
            ws.git("apply", "--cached", "--binary", "-", input=job.patch, index=index)
        tree = ws.git("write-tree", index=index).strip()
    sha = ws.git("commit-tree", tree, "-p", job.start, "-m", f"driver commit {job.commit}").strip()
    ws.set_ref(ref, sha)
    return sha

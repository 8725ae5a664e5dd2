"""Where a candidate's code runs: what it can see and write, and the kernel limits it cannot lift.

Two sandboxes share one small protocol. `Bubblewrap` (when Debian's `bwrap` is installed) gives the run its own
user, pid, network, ipc and uts namespaces and a filesystem view of its own:

- the whole host read-only, with a private /tmp and an empty home;
- the repository's main checkout hidden (and with it the ledger, `.rsi/`, and the other worktrees), except
  its `.git`, read-only, which the worktree's git metadata lives in;
- the experiment's worktree writable, with its frozen files and `.git` link read-only on top;
- the cache read-only (the setup command alone may write it), data named in `[holdout] data` hidden from
  everything but the holdout command, and the extra paths of `[sandbox]`.

Inside, the candidate is uid 65534 with no capabilities, even when rsi runs as root; it sees only its own
processes, so not the orchestrator's environment. `Bare` runs the command as it is, when bubblewrap is missing
or `[sandbox] enabled = false`; rsi says so once.

`Limits` apply in both: file size, CPU time and open files as rlimits, the process count through a pids cgroup
where one can be made (RLIMIT_NPROC does not bind root, and inside a user namespace rsi's uid is still root to
the kernel), and an oom_score_adj of 1000 so the kernel's OOM killer takes the candidate, not the orchestrator.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rsi.errors import UserError

NOBODY = 65534
CPU_GRACE_S = 5  # CPU seconds between SIGXCPU and SIGKILL
CGROUP_V1_PIDS, CGROUP_V2 = Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")
_counter = itertools.count()


class Sandbox(Protocol):
    @property
    def name(self) -> str:
        """How the run is confined, for the ledger and the warning: "bubblewrap" or "none"."""
        ...

    def argv(self, command: str, cwd: Path) -> list[str]:
        """The argument vector that runs the shell command `command` in `cwd`, confined."""
        ...


@dataclass(frozen=True)
class Bare:
    """No confinement but the limits: the command runs as the orchestrator's user, seeing what it sees."""

    name: str = "none"

    def argv(self, command: str, cwd: Path) -> list[str]:
        return ["/bin/sh", "-c", command]


@dataclass(frozen=True)
class View:
    """The filesystem a run sees, in host paths."""

    repo: Path  # the main checkout: hidden, but for its .git (read-only)
    worktree: Path  # writable
    read_only_inside: Sequence[str] = ()  # worktree-relative paths made read-only (frozen files)
    hidden_inside: Sequence[str] = ()  # worktree-relative paths hidden (held-out data, for the task's command)
    read_only: Sequence[Path] = ()  # extra host paths, read-only (the cache for runs, [sandbox] read_only)
    writable: Sequence[Path] = ()  # extra host paths, writable (the cache for setup, [sandbox] writable)
    hidden: Sequence[Path] = ()  # extra host paths hidden (held-out data outside the repository)
    network: bool = False


@dataclass(frozen=True)
class Bubblewrap:
    view: View
    bwrap: str = "bwrap"
    name: str = "bubblewrap"

    def argv(self, command: str, cwd: Path) -> list[str]:
        v = self.view
        repo, worktree = v.repo.resolve(), v.worktree.resolve()
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
        args += ["--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL", "--hostname", "sandbox"]
        if v.network:
            args.append("--share-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        home = Path.home().resolve()
        if home != Path("/"):
            args += ["--tmpfs", str(home)]
        for system in HIDDEN_SYSTEM_PATHS:  # sockets of local services; files only root should read
            args += _hide(Path(system))
        inside, outside = _interpreter_paths(repo)
        for path in outside:  # a venv in the home or under /tmp must still run
            args += ["--ro-bind", str(path), str(path)]
        args += ["--tmpfs", str(repo)]  # the main checkout, its .git (held-out data, credentials) and .rsi/
        for path in inside:  # ... but for a venv inside the repository
            args += ["--ro-bind", str(path), str(path)]
        for path in v.read_only:
            args += [_bind_kind(path, "--ro-bind-try"), str(path.resolve()), str(path.resolve())]
        args += ["--bind", str(worktree), str(worktree)]
        for path in v.writable:
            args += [_bind_kind(path, "--bind-try"), str(path.resolve()), str(path.resolve())]
        for rel in (".git", *v.read_only_inside):
            target = worktree / rel
            if target.exists() and not target.is_symlink():
                args += ["--ro-bind", str(target), str(target)]
        for path in [*(worktree / rel for rel in v.hidden_inside), *v.hidden]:
            args += _hide(path)
        args += ["--chdir", str(cwd.resolve()), "--", "/bin/sh", "-c", command]
        return args


# Unix sockets ignore network namespaces: hide where services keep theirs (/tmp is private already), and the
# files that only root may read (the candidate is root to the kernel when rsi runs as root).
HIDDEN_SYSTEM_PATHS = (
    "/run",
    "/var/run",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/root",
    "/var/lib/docker",
)


def _bind_kind(path: Path, default: str) -> str:
    """Device files (a GPU's /dev/nvidia*) need a device bind, which is writable; everything else a plain one."""
    return "--dev-bind-try" if str(path).startswith("/dev/") else default


def _hide(path: Path) -> list[str]:
    """An empty directory over a directory, /dev/null over a file, nothing for an absent path. A symlink's
    target is what gets hidden (bwrap cannot mount over a link, and the target is where the data is)."""
    if not path.exists():
        return []
    path = path.resolve()
    return ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]


def _interpreter_paths(repo: Path) -> tuple[list[Path], list[Path]]:
    """The Python that runs rsi (and so, usually, the task): its prefixes, installed packages and rsi's own
    code (an editable install lives outside them; `rsi meta`'s evaluator imports it), split into those inside
    the repository (bound after it is hidden) and the rest. A path that is the repository or lies in its
    `.rsi/` is left out: binding it would show what the sandbox hides."""
    state = repo / ".rsi"
    inside: set[Path] = set()
    outside: set[Path] = set()
    own = str(Path(__file__).resolve().parent.parent)  # the folder that holds the rsi package
    for raw in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), own):
        path = Path(raw).resolve()
        if not path.exists() or path == Path("/") or path == repo or path.is_relative_to(state):
            continue
        (inside if path.is_relative_to(repo) else outside).add(path)
    return sorted(inside), sorted(outside)


def bubblewrap_path() -> str | None:
    """bwrap, if it is installed and can make namespaces here (a container may forbid user namespaces)."""
    found = shutil.which("bwrap")
    if found is None:
        return None
    return found if _works(found) else None


_WORKS: dict[str, bool] = {}


def _works(bwrap: str) -> bool:
    if bwrap not in _WORKS:
        probe = [bwrap, "--unshare-all", "--uid", str(NOBODY), "--ro-bind", "/", "/", "--", "/bin/true"]
        try:
            _WORKS[bwrap] = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _WORKS[bwrap] = False
    return _WORKS[bwrap]


@dataclass(frozen=True)
class Limits:
    """Kernel limits on one run's process tree (memory is sampled by the runner: RLIMIT_AS breaks PyTorch)."""

    processes: int = 1024
    file_size: int | None = None  # bytes, per file written
    cpu_seconds: int | None = None  # CPU time of each process
    open_files: int = 4096
    cpus: tuple[int, ...] = ()  # the cores of the run's slot (affinity); () leaves it as rsi's own

    def rlimits(self) -> list[tuple[int, int, int]]:
        """(resource, soft, hard); CPU time's soft limit sends SIGXCPU, which names itself, before SIGKILL."""
        limits = [(resource.RLIMIT_NOFILE, self.open_files, self.open_files), (resource.RLIMIT_CORE, 0, 0)]
        if self.file_size is not None:
            limits.append((resource.RLIMIT_FSIZE, self.file_size, self.file_size))
        if self.cpu_seconds is not None:
            limits.append((resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + CPU_GRACE_S))
        if os.geteuid() != 0:  # binds only a non-root uid; root is bounded by the cgroup
            limits.append((resource.RLIMIT_NPROC, self.processes, self.processes))
        return limits


@dataclass
class PidsCgroup:
    """A pids cgroup of its own for one run: a cap on its process count, and a list of every process in it,
    daemons included, to kill at the end."""

    path: Path
    members: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, limit: int) -> PidsCgroup | None:
        for parent in _pids_parents():
            _remove_stale(parent)
            path = parent / f"rsi-{os.getpid()}-{next(_counter)}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(limit))
                return cls(path)
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
        return None

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kills whatever is left in it, then removes it; a process stuck in the kernel may delay that."""
        for _ in range(100):
            pids = self.procs()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            self.path.rmdir()


_SWEPT: set[Path] = set()


def _remove_stale(parent: Path) -> None:
    """Once per process: cgroups left by an orchestrator that was killed (its pid is in their name). Never the
    cgroup this process runs in: an rsi started by a run (the meta level's evaluator researching an example)
    sees its own run's cgroup, whose orchestrator is outside its pid namespace and so looks dead to it."""
    if parent in _SWEPT:
        return
    _SWEPT.add(parent)
    own = _own_cgroups()
    for path in parent.glob("rsi-*-*"):
        owner = path.name.split("-")[1]
        if not owner.isdigit() or int(owner) == os.getpid() or _alive(int(owner)):
            continue
        if any(path == mine or path in mine.parents for mine in own) or os.getpid() in PidsCgroup(path).procs():
            continue
        PidsCgroup(path).remove()


def _cgroups() -> list[tuple[list[str], Path]]:
    """This process's cgroups from /proc/self/cgroup: each hierarchy's controllers and the cgroup's folder
    (v1's pids hierarchy, or v2's unified one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, names, path = line.split(":", 2)
        controllers = names.split(",") if names else []
        found.append((controllers, (CGROUP_V1_PIDS if "pids" in controllers else CGROUP_V2) / path.lstrip("/")))
    return found


def _own_cgroups() -> list[Path]:
    """The cgroup folders this process is in."""
    return [path for _, path in _cgroups()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_parents() -> list[Path]:
    """Where this process may make a pids cgroup: below its own cgroup in a v1 pids hierarchy, or in v2
    where its cgroup delegates the pids controller."""
    found = []
    for controllers, path in _cgroups():
        if "pids" in controllers:
            found.append(path)
        elif not controllers:
            with contextlib.suppress(OSError):
                if "pids" in (path / "cgroup.subtree_control").read_text().split():
                    found.append(path)
    return found


_PRLIMIT_NAMES = {
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_CORE: "core",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_CPU: "cpu",
    resource.RLIMIT_NPROC: "nproc",
}
# joins the run's cgroup (`echo 0`: the writing shell itself) and volunteers for the OOM killer, then becomes the
# next program; a cgroup that went away is not fatal: the run goes on uncapped rather than not at all
_ENTER = '{ echo 0 > "$1"; } 2>/dev/null; { echo 1000 > /proc/self/oom_score_adj; } 2>/dev/null; shift; exec "$@"'


def launcher(limits: Limits, cgroup: PidsCgroup | None) -> list[str]:
    """The programs a run's command is started through, each applying part of its confinement before it execs
    the next: /bin/sh (cgroup, oom_score_adj), prlimit (rlimits), taskset (the slot's cores). No Python runs
    between fork and exec: with worker threads in rsi that would be unsafe, and it would need a full fork of
    rsi's memory where a vfork is enough."""
    prlimit, taskset = shutil.which("prlimit"), shutil.which("taskset")
    if prlimit is None or (limits.cpus and taskset is None):
        raise UserError("prlimit and taskset (util-linux) are needed to apply a run's limits: apt install util-linux")
    procs = str(cgroup.path / "cgroup.procs") if cgroup is not None else "/dev/null"
    argv = ["/bin/sh", "-c", _ENTER, "rsi-enter", procs, prlimit]
    for which, soft, hard in limits.rlimits():
        ceiling = resource.getrlimit(which)[1]  # without CAP_SYS_RESOURCE no limit can be raised past rsi's own
        if ceiling != resource.RLIM_INFINITY:
            hard = min(hard, ceiling)
            soft = min(soft, hard)
        argv.append(f"--{_PRLIMIT_NAMES[which]}={soft}:{hard}")
    argv.append("--")
    if limits.cpus:
        argv += [str(taskset), "-c", ",".join(map(str, limits.cpus))]
    return argv


@contextlib.contextmanager
def confined(limits: Limits) -> Iterator[list[str]]:
    """A cgroup for one run's process tree, and the launcher to put in front of its argv; afterwards, everything
    left in the cgroup is killed and the cgroup removed."""
    cgroup = PidsCgroup.make(limits.processes)
    try:
        yield launcher(limits, cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()


def cgroup_available() -> bool:
    """Whether this machine lets rsi cap a run's process count with a pids cgroup."""
    cgroup = PidsCgroup.make(1)
    if cgroup is None:
        return False
    cgroup.remove()
    return True

"""The workspace: git is where code lives. The user's branch and working tree are never touched.

Kept candidates become commits on `rsi/<tag>`; every candidate, kept or not, stays reachable under
`refs/rsi/candidates/<id>`; each experiment runs in a git worktree of exactly its commit under `.rsi/worktrees/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from rsi.errors import UserError

P = ParamSpec("P")
T = TypeVar("T")
STATE_DIR = ".rsi"
EVAL_SUFFIX = ".eval"  # the evaluation checkout of worktree N is N.eval
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".pyx", ".sh"})
# rsi's own commits have a fixed identity, so they work on machines with no git user configured,
# and never run the user's hooks or signing (a commit is harness bookkeeping, not the user's act).
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "rsi",
    "GIT_AUTHOR_EMAIL": "rsi@localhost",
    "GIT_COMMITTER_NAME": "rsi",
    "GIT_COMMITTER_EMAIL": "rsi@localhost",
    "GIT_TERMINAL_PROMPT": "0",
    # worktrees hold untrusted files: no fsmonitor hook, no hooks, no submodule recursion, whatever a config says
    "GIT_CONFIG_COUNT": "3",
    "GIT_CONFIG_KEY_0": "core.fsmonitor",
    "GIT_CONFIG_VALUE_0": "false",
    "GIT_CONFIG_KEY_1": "core.hooksPath",
    "GIT_CONFIG_VALUE_1": "/dev/null",
    "GIT_CONFIG_KEY_2": "submodule.recurse",
    "GIT_CONFIG_VALUE_2": "false",
}


def is_glob(pattern: str) -> bool:
    """Whether a path from rsi.toml is a glob rather than a plain path."""
    return any(c in pattern for c in "*?[")


def matches(path: str, globs: Iterable[str]) -> bool:
    """A repository-relative path against `rsi.toml` globs (`*.py`, `src/**/*.py`, `train.py`)."""
    return any(
        fnmatch.fnmatchcase(path, g) or (g.startswith("**/") and fnmatch.fnmatchcase(path, g[3:])) for g in globs
    )


def _serialized(method: Callable[P, T]) -> Callable[P, T]:
    """Runs a Workspace method under its lock: git's worktree list and refs are shared by all workers."""

    @functools.wraps(method)
    def locked(*args: P.args, **kwargs: P.kwargs) -> T:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return locked


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.state = self.root / STATE_DIR
        self._env = {**os.environ, **_GIT_ENV}
        self._checked_out: dict[str, str] = {}  # worktree name -> the commit it holds
        self._removed = 0
        self.stale_lock: int | None = None  # pid of a dead orchestrator whose lock open() took over
        # workers share the repository: what changes its worktree list or its refs happens one at a time
        self._lock = threading.RLock()
        self._untouched: set[Path] = set()  # worktrees git just made, which no run has used yet

    def git(self, *args: str, cwd: Path | None = None, input: bytes | None = None, index: Path | None = None) -> str:
        return self.git_bytes(*args, cwd=cwd, input=input, index=index).decode(errors="replace")

    def git_bytes(
        self, *args: str, cwd: Path | None = None, input: bytes | None = None, index: Path | None = None
    ) -> bytes:
        """git's output; with `index`, git works on that index file instead of the repository's own."""
        proc = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
            cwd=cwd or self.root,
            env=self._env if index is None else {**self._env, "GIT_INDEX_FILE": str(index)},
            input=input,
            capture_output=True,
        )
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"git {' '.join(args)} failed: {msg[-1] if msg else proc.returncode}")
        return proc.stdout

    # the user's repository
    def check_repository(self) -> None:
        if shutil.which("git") is None:
            raise UserError("git is not installed; rsi keeps every experiment in git")
        try:
            top = self.git("rev-parse", "--show-toplevel").strip()
        except RuntimeError:
            raise UserError(f"{self.root} is not a git repository (run `git init` and commit your code)") from None
        if Path(top).resolve() != self.root:
            raise UserError(f"rsi.toml must sit at the repository root ({top}), not in {self.root}")
        try:
            self.git("rev-parse", "--verify", "HEAD^{commit}")
        except RuntimeError:
            raise UserError("the repository has no commit yet: commit your code first") from None

    def head(self) -> str:
        return self.git("rev-parse", "HEAD^{commit}").strip()

    def dirty(self, globs: Sequence[str]) -> list[str]:
        """Tracked or new files matching globs that differ from HEAD in the user's working tree."""
        out = self.git("status", "--porcelain", "-z", "--untracked-files=all")
        paths = [entry[3:] for entry in out.split("\0") if len(entry) > 3]
        return [p for p in paths if matches(p, globs) and not p.startswith(STATE_DIR + "/")]

    # the Store protocol (see store.py): what the research loop asks of the place code lives
    def begin(
        self, tag: str, watched: Sequence[str], frozen: Sequence[str], new: bool = True
    ) -> tuple[str, dict[str, str]]:
        """Check that a research can start: no uncommitted changes to watched files, no branch rsi/<tag> yet
        (unless not `new`: a research starting again). Returns the start commit (HEAD) and the SHA-256 of each
        frozen file in it. The branch is created, or moved, once the ledger has recorded the start (a kill in
        between must not leave a branch the ledger lacks)."""
        dirty = self.dirty(watched)
        if dirty:
            raise UserError(f"uncommitted changes to {', '.join(dirty[:3])}: commit or stash them first")
        if new and self.ref(f"refs/heads/rsi/{tag}") is not None:
            raise UserError(f"branch rsi/{tag} already exists: pick another --tag")
        head = self.head()
        hashes = {p: hashlib.sha256(self.read_bytes(head, p)).hexdigest() for p in self.files(head, frozen)}
        return head, hashes

    def open(self) -> None:
        self.check_repository()
        self.hide_state_dir()
        self.stale_lock = lock(self.state / "lock")

    @_serialized
    def candidate(self, exp_id: int, parent: str, edits: Mapping[str, str], message: str) -> str:
        """Commit a candidate in its own worktree (left checked out for its runs) and keep it reachable."""
        wt = self.add_worktree(str(exp_id), parent)
        sha = self.commit_in(wt, edits, message)
        self.set_ref(f"refs/rsi/candidates/{exp_id}", sha)
        return sha

    @_serialized
    def rebase(self, exp_id: int, candidate: str, onto: str, message: str) -> str | None:
        """The candidate's change replayed on `onto` (which descends from the candidate's parent) as candidate
        `exp_id`: each file it changed is merged three ways; where both changed the same lines, the candidate's
        lines win (for a knob change, that is the candidate's point measured on the new best). None when a
        change cannot be replayed as text (a deleted or binary file)."""
        parent = self.git("rev-parse", f"{candidate}^").strip()
        edits: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="rsi-rebase-") as tmp:
            for path in self.git("diff", "--name-only", "-z", "--no-renames", parent, candidate).split("\0"):
                if not path:
                    continue
                theirs = self.blob(candidate, path)
                if theirs is None:  # the candidate deleted it: not replayed as text
                    return None
                base, ours = self.blob(parent, path), self.blob(onto, path)
                if base is None or ours is None or ours == base:  # new, or the new best left it alone
                    merged = theirs
                else:
                    if b"\0" in base + ours + theirs:
                        return None
                    files = [Path(tmp) / name for name in ("ours", "base", "theirs")]
                    for file, data in zip(files, (ours, base, theirs), strict=True):
                        file.write_bytes(data)
                    proc = subprocess.run(
                        ["git", "merge-file", "-p", "--theirs", *map(str, files)], env=self._env, capture_output=True
                    )
                    if proc.returncode < 0 or proc.returncode > 127:
                        return None
                    merged = proc.stdout
                try:
                    edits[path] = merged.decode("utf-8")
                except UnicodeDecodeError:  # edits are text: a file in another encoding is not replayed
                    return None
        return self.candidate(exp_id, onto, edits, message) if edits else None

    @_serialized
    def ensure_candidate(self, exp_id: int, sha: str) -> bool:
        """Points the candidate's ref at its commit; False when the commit is gone from the repository."""
        if self.ref(f"refs/rsi/candidates/{exp_id}") != sha:
            if not self.has_commit(sha):
                return False
            self.set_ref(f"refs/rsi/candidates/{exp_id}", sha)
        return True

    @_serialized
    def keep(self, candidate: str, parent: str, message: str) -> str:
        return self.commit_tree(candidate, parent, message)

    @_serialized
    def set_branch(self, tag: str, sha: str) -> None:
        self.set_ref(f"refs/heads/rsi/{tag}", sha)

    @_serialized
    def restore_branch(self, tag: str, sha: str) -> str | None:
        """Puts the research branch back at `sha` (where the ledger says it is). A commit it pointed at that is
        not in `sha`'s history (someone committed on the branch) is kept under a ref of its own, whose name is
        returned, and not dropped."""
        have = self.ref(f"refs/heads/rsi/{tag}")
        if have == sha:
            return None
        saved = None
        if have is not None and not self._ancestor(have, sha):
            saved = f"refs/rsi/saved/{tag}/{have[:12]}"
            self.set_ref(saved, have)
        self.set_ref(f"refs/heads/rsi/{tag}", sha)
        return saved

    def _ancestor(self, older: str, newer: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", older, newer)
        except RuntimeError:
            return False
        return True

    def checkout(self, name: str, commit: str) -> Path:
        return self.add_worktree(name, commit)

    def release(self, name: str) -> None:
        self.remove_worktree(name)

    def recover(self) -> None:
        self.remove_all_worktrees()

    @_serialized
    def close(self) -> None:
        self.git("worktree", "prune")  # removed worktrees leave bookkeeping behind; clear it
        fd = _HELD.get(self.state / "lock")
        if fd is not None:  # a clean stop: no pid left behind to report as a dead holder
            os.ftruncate(fd, 0)

    def hide_state_dir(self) -> None:
        """List `.rsi/` in .git/info/exclude so the user's `git status` stays clean; touches no tracked file."""
        exclude = Path(self.git("rev-parse", "--git-path", "info/exclude").strip())
        if not exclude.is_absolute():
            exclude = self.root / exclude
        text = exclude.read_text() if exclude.exists() else ""
        if f"/{STATE_DIR}/" not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + f"/{STATE_DIR}/\n")

    # commits and refs
    def files(self, commit: str, globs: Sequence[str]) -> list[str]:
        out = self.git("ls-tree", "-r", "-z", "--name-only", commit)
        return [p for p in out.split("\0") if p and matches(p, globs)]

    def read(self, commit: str, path: str) -> str:
        return self.git("show", f"{commit}:{path}")

    def links(self, commit: str) -> set[str]:
        out = self.git("ls-tree", "-r", "-z", commit)
        return {entry.split("\t", 1)[1] for entry in out.split("\0") if entry.startswith("120000 ")}

    def clean(self, worktree: Path) -> None:
        """Back to the commit exactly: what an earlier run left (checkpoints, caches, a changed file) must not
        help or spoil the next. A run that made its files unremovable (chmod 000) gets its modes fixed first.
        A worktree git has just made and no run has used is clean already: two git processes fewer per run."""
        if worktree in self._untouched:
            self._untouched.discard(worktree)
            return
        try:
            self.git("reset", "--hard", "-q", cwd=worktree)
            self.git("clean", "-ffdxq", cwd=worktree)
        except RuntimeError:
            for folder, dirs, files in os.walk(worktree):
                for name in [*dirs, *files]:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(folder, name), 0o700, follow_symlinks=False)
            self.git("reset", "--hard", "-q", cwd=worktree)
            self.git("clean", "-ffdxq", cwd=worktree)

    def blob(self, commit: str, path: str) -> bytes | None:
        try:
            return self.read_bytes(commit, path)
        except RuntimeError:
            return None

    def read_bytes(self, commit: str, path: str) -> bytes:
        proc = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=self.root, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot read {path} at {commit[:10]}")
        return proc.stdout

    @_serialized
    def set_ref(self, ref: str, sha: str) -> None:
        self.git("update-ref", ref, sha)

    def has_commit(self, sha: str) -> bool:
        """Whether the repository holds the commit (a `git gc` after its refs were deleted removes it)."""
        return self.ref(f"{sha}^{{commit}}") is not None

    def ref(self, ref: str) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "--quiet", ref).strip() or None
        except RuntimeError:
            return None

    @_serialized
    def commit_tree(self, tree_of: str, parent: str, message: str) -> str:
        """A new commit with the tree of `tree_of` on `parent` (a kept candidate's commit on the branch)."""
        return self.git("commit-tree", f"{tree_of}^{{tree}}", "-p", parent, "-m", message).strip()

    @_serialized
    def commit_tree_with(self, parent: str, edits: Mapping[str, str], message: str) -> str:
        """A commit on `parent` with its tree changed by `edits` (paths it already has), made without a worktree."""
        with tempfile.TemporaryDirectory(prefix="rsi-index-") as tmp:
            index = Path(tmp) / "index"
            self.git("read-tree", parent, index=index)
            modes = {}
            for entry in self.git("ls-tree", "-r", "-z", parent, "--", *edits).split("\0"):
                if entry:
                    meta, path = entry.split("\t", 1)
                    modes[path] = meta.split()[0]
            for path, text in edits.items():
                blob = self.git("hash-object", "-w", "--stdin", input=text.encode()).strip()
                self.git(
                    "update-index", "--add", "--cacheinfo", f"{modes.get(path, '100644')},{blob},{path}", index=index
                )
            tree = self.git("write-tree", index=index).strip()
        return self.git("commit-tree", tree, "-p", parent, "-m", message).strip()

    # worktrees
    def worktree_dir(self, name: str) -> Path:
        return self.state / "worktrees" / name

    @_serialized
    def add_worktree(self, name: str, commit: str) -> Path:
        path = self.worktree_dir(name)
        if self._checked_out.get(name) == commit and path.exists():
            return path  # the candidate was just committed here: run it where it is
        if path.exists():
            self.remove_worktree(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # --force: the name may still be registered by a worktree removed without a prune
        self.git("worktree", "add", "--quiet", "--force", "--detach", str(path), commit)
        self._checked_out[name] = commit
        self._untouched.add(path)
        return path

    def commit_in(self, worktree: Path, edits: Mapping[str, str], message: str) -> str:
        """Write the edits into a worktree and commit them; returns the new commit. When every edited file is
        already tracked (they exist in the fresh checkout), `git commit -- paths` commits them without an add."""
        tracked = bool(edits) and worktree in self._untouched and all((worktree / rel).is_file() for rel in edits)
        for rel, text in edits.items():
            target = worktree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        commit = ["commit", "--quiet", "--no-verify", "--allow-empty", "-m", message]
        if tracked:
            self.git(*commit, "--", *edits, cwd=worktree)
        else:
            self.git("add", "--", *edits, cwd=worktree)
            self.git(*commit, cwd=worktree)
        sha = self._worktree_head(worktree)
        self._checked_out[worktree.name] = sha
        return sha

    def _worktree_head(self, worktree: Path) -> str:
        """A detached worktree's HEAD file holds the commit itself: reading it saves a git process."""
        gitdir = (worktree / ".git").read_text().split(":", 1)[1].strip()
        head = (worktree / gitdir / "HEAD").read_text()
        return head.strip() if not head.startswith("ref:") else self.git("rev-parse", "HEAD", cwd=worktree).strip()

    def changed_tracked(self, worktree: Path) -> list[str]:
        """Tracked files a run modified or deleted in its worktree (a type change to a symlink included):
        evidence of tampering. A worktree whose git link the run broke is all changed."""
        try:
            out = self.git(
                "status", "--porcelain", "-z", "--untracked-files=no", "--ignore-submodules=all", cwd=worktree
            )
        except RuntimeError:
            return [".git (the worktree's link to the repository)"]
        return [entry[3:] for entry in out.split("\0") if len(entry) > 3]

    def evaluation_copy(self, worktree: Path, commit: str, skip: Sequence[str] = ()) -> Path:
        """A fresh checkout of `commit` beside `worktree`, holding the files the last run there produced,
        for the evaluator and the holdout command: their code comes from git, not from what the run left.
        Code the run wrote (modules, bytecode, extensions, .pth files), links, and the paths in `skip` (the
        metric file) are not carried over."""
        target = self.add_worktree(f"{worktree.name}{EVAL_SUFFIX}", commit)
        self.clean(target)
        tracked = set(self.git("ls-tree", "-r", "-z", "--name-only", commit).split("\0"))
        for folder, dirs, files in os.walk(worktree):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(folder, d))]
            for name in files:
                src = Path(folder) / name
                rel = src.relative_to(worktree).as_posix()
                if rel in tracked or rel in skip or rel == ".git" or src.suffix in CODE_SUFFIXES:
                    continue
                if src.is_symlink() or not src.is_file():
                    continue
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)  # cheap for a large checkpoint; the next run starts from a clean tree
                except OSError:
                    shutil.copy2(src, dst)
        return target

    @_serialized
    def remove_worktree(self, name: str) -> None:
        """Delete the checkout; git's bookkeeping of it is pruned in batches (one process less per run)."""
        self._checked_out.pop(name, None)
        self._untouched.discard(self.worktree_dir(name))
        shutil.rmtree(self.worktree_dir(name), ignore_errors=True)
        if not name.endswith(EVAL_SUFFIX) and self.worktree_dir(name + EVAL_SUFFIX).exists():
            self.remove_worktree(name + EVAL_SUFFIX)
        self._removed += 1
        if self._removed % 50 == 0:
            self.git("worktree", "prune")

    @_serialized
    def remove_all_worktrees(self) -> None:
        """After a crash: worktrees of experiments that no longer run."""
        shutil.rmtree(self.state / "worktrees", ignore_errors=True)
        self._checked_out.clear()
        self.git("worktree", "prune")


_HELD: dict[Path, int] = {}  # locks this process holds: a process may open its own research again


def lock(path: Path) -> int | None:
    """One orchestrator per task: an exclusive flock, which the kernel releases when its process dies.
    Returns the pid written by an earlier holder that died without unlocking (its lock is now ours)."""
    if path in _HELD:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"another rsi (pid {holder}) is working on this task; wait for it or stop it") from None
    previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[path] = fd
    return int(previous) if previous.isdigit() and int(previous) != os.getpid() else None


def hash_files(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each file ('missing' for a file that is not there)."""
    out = {}
    for rel in paths:
        p = root / rel
        if p.is_symlink():  # git stores a link as its target's path: hash that, as begin() does
            out[rel] = hashlib.sha256(os.readlink(p).encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    return out

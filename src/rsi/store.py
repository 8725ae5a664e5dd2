"""Where code lives during a research: a protocol, with git (workspace.py) and memory implementations.

The research loop asks only for these operations, so the same loop, proposers, judge and ledger run on a git
repository with real worktrees or, for tasks that are Python functions (synthetic research tasks, the meta
level), on content-addressed snapshots held in memory: no git process, no checkout, microseconds a candidate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from rsi.workspace import matches


class Store(Protocol):
    @property
    def state(self) -> Path | None:
        """Where the ledger, logs and caches live (None: keep the ledger in memory)."""
        ...

    def open(self) -> None: ...

    def begin(self, tag: str, watched: Sequence[str], frozen: Sequence[str]) -> tuple[str, dict[str, str]]:
        """Start a research branch; returns the start commit and the hashes of the frozen files."""
        ...

    def files(self, commit: str, globs: Sequence[str]) -> list[str]: ...

    def read(self, commit: str, path: str) -> str: ...

    def links(self, commit: str) -> set[str]:
        """Paths that are symbolic links in the commit: an edit must not write through one."""
        ...

    def candidate(self, exp_id: int, parent: str, edits: Mapping[str, str], message: str) -> str:
        """Commit the edits on top of parent; the candidate stays reachable forever."""
        ...

    def rebase(self, exp_id: int, candidate: str, onto: str, message: str) -> str | None:
        """The candidate's change replayed on `onto`, which descends from its parent (None: it cannot be)."""
        ...

    def ensure_candidate(self, exp_id: int, sha: str) -> bool:
        """The candidate's commit kept reachable; False when it is gone."""
        ...

    def keep(self, candidate: str, parent: str, message: str) -> str:
        """The commit that records a keep on the research branch."""
        ...

    def set_branch(self, tag: str, sha: str) -> None: ...

    def checkout(self, name: str, commit: str) -> Path:
        """A directory holding the commit for runs (a memory store has none and returns a placeholder)."""
        ...

    def release(self, name: str) -> None: ...

    def recover(self) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Snapshots of a few small files, addressed by the hash of their content and parent."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.state: Path | None = None
        self.snapshots: dict[str, dict[str, str]] = {}
        self.branches: dict[str, str] = {}
        self.parents: dict[str, str] = {}
        self.root = self._put(dict(files), "", "start")

    def _put(self, files: dict[str, str], parent: str, message: str) -> str:
        key = hashlib.sha256(json.dumps([files, parent, message], sort_keys=True).encode()).hexdigest()
        self.snapshots[key] = files
        self.parents[key] = parent
        return key

    def snapshot(self, commit: str) -> dict[str, str]:
        return self.snapshots[commit]

    def open(self) -> None:
        return None

    def begin(self, tag: str, watched: Sequence[str], frozen: Sequence[str]) -> tuple[str, dict[str, str]]:
        self.branches[tag] = self.root
        files = self.snapshots[self.root]
        return self.root, {p: hashlib.sha256(t.encode()).hexdigest() for p, t in files.items() if matches(p, frozen)}

    def files(self, commit: str, globs: Sequence[str]) -> list[str]:
        return sorted(p for p in self.snapshots[commit] if matches(p, globs))

    def read(self, commit: str, path: str) -> str:
        return self.snapshots[commit][path]

    def links(self, commit: str) -> set[str]:
        return set()

    def candidate(self, exp_id: int, parent: str, edits: Mapping[str, str], message: str) -> str:
        return self._put({**self.snapshots[parent], **edits}, parent, message)

    def rebase(self, exp_id: int, candidate: str, onto: str, message: str) -> str | None:
        """File by file: each file the candidate changed is taken as the candidate has it."""
        base, mine = self.snapshots[self.parents[candidate]], self.snapshots[candidate]
        changed = {p: t for p, t in mine.items() if base.get(p) != t}
        if not changed or set(base) - set(mine):
            return None
        return self._put({**self.snapshots[onto], **changed}, onto, message)

    def ensure_candidate(self, exp_id: int, sha: str) -> bool:
        return sha in self.snapshots

    def keep(self, candidate: str, parent: str, message: str) -> str:
        return self._put(dict(self.snapshots[candidate]), parent, message)

    def set_branch(self, tag: str, sha: str) -> None:
        self.branches[tag] = sha

    def checkout(self, name: str, commit: str) -> Path:
        return Path(commit)

    def release(self, name: str) -> None:
        return None

    def recover(self) -> None:
        return None

    def close(self) -> None:
        return None

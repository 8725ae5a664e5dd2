"""`rsi fork`: a new research line that starts from any commit of a research, beside the one that runs.

A task holds one research (its ledger is `.rsi/ledger.sqlite`), so a line of its own needs a repository of its
own: a local clone (git hard-links the objects, so it costs little and does not depend on the original
afterwards) under `.rsi/forks/<tag>/`, checked out at the commit on the branch `fork/<tag>`. `rsi run` there
researches it with the tag given, while the original research goes on undisturbed; its results are a git
branch away (`git fetch .rsi/forks/<tag> rsi/<tag>`). The original's ledger lists its forks.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from rsi.config import CONFIG_NAME
from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.workspace import Workspace

FORK_TAG = "fork_tag"  # ledger meta of a fork: the tag its first `rsi run` takes


def fork(root: Path, start: str, tag: str, dest: Path | None = None) -> tuple[Path, str]:
    """Makes the fork; returns its folder and the commit it starts from."""
    ws = Workspace(root.resolve())
    ws.check_repository()
    check_tag(tag)
    if ws.ref(f"refs/heads/rsi/{tag}") is not None:  # fetching the fork's result back would not fast-forward
        raise UserError(f"--tag {tag!r}: this repository already has a branch rsi/{tag}; choose another tag")
    ledger_path = ws.state / "ledger.sqlite"
    research = Ledger(ledger_path, readonly=True) if ledger_path.is_file() else None
    try:
        commit = resolve(ws, research, start)
    finally:
        if research is not None:
            research.close()
    settings = None  # the folder's rsi.toml, for a commit made before it was committed
    if not ws.files(commit, [CONFIG_NAME]):
        if not (root / CONFIG_NAME).is_file():
            raise UserError(
                f"commit {commit[:10]} has no {CONFIG_NAME}, and neither has {root}: nothing says what to run"
            )
        settings = (root / CONFIG_NAME).read_bytes()
    dest = (dest or ws.state / "forks" / tag).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists and is not an empty folder: choose another --tag or --dir")
    given = dest.exists()  # an empty folder the user named: emptied again on failure, not removed
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the folder for the fork: {e}") from None
    try:
        _git(root, "clone", "--quiet", "--no-checkout", str(ws.root), str(dest))
        _git(dest, "checkout", "--quiet", "-b", f"fork/{tag}", commit)
        if settings is not None:  # committed on top, so the fork's research starts from a commit that has it
            (dest / CONFIG_NAME).write_bytes(settings)
            line = Workspace(dest)  # rsi's own identity, no hooks, no signing
            line.git("add", "--force", CONFIG_NAME)
            message = f"rsi fork: the {CONFIG_NAME} of {root.resolve()}, which commit {commit[:10]} lacks"
            line.git("commit", "-q", "-m", message)
            commit = line.git("rev-parse", "HEAD").strip()
        mine = Ledger(Workspace(dest).state / "ledger.sqlite")
        mine.set(FORK_TAG, tag)
        mine.close()
    except BaseException:  # no half-made fork left to block a retry
        for part in list(dest.iterdir()) if given and dest.is_dir() else [dest]:
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
        raise
    if research is not None:
        parent = Ledger(ledger_path)
        with parent.transaction():
            forks = [*(parent.get_json("forks") or []), {"tag": tag, "commit": commit, "path": str(dest)}]
            parent.set("forks", json.dumps(forks))
        parent.close()
    return dest, commit


def resolve(ws: Workspace, research: Ledger | None, start: str) -> str:
    """A commit from an experiment number (`12` or `#12`: its kept commit, else its candidate commit) or
    anything git reads as a commit (a hash, a branch, `rsi/<tag>~2`)."""
    number = re.fullmatch(r"#?([0-9]+)", start.strip())  # (ASCII digits: int() reads others too)
    known = research is not None and number is not None and len(number.group(1)) <= 18
    exp = research.experiment(int(number.group(1))) if known and research is not None and number else None
    if exp is not None:
        commit = exp.kept_commit or exp.commit_sha
        if commit is None:
            raise UserError(f"experiment #{exp.id} was rejected before it was committed: it has no commit")
        return commit
    try:  # (digits alone may also begin a commit's hash)
        return ws.git("rev-parse", "--verify", "--quiet", f"{start}^{{commit}}").strip()
    except RuntimeError:
        if number and research is not None:
            raise UserError(
                f"there is no experiment #{number.group(1)} in this research, nor a commit {start!r}"
            ) from None
        raise UserError(f"{start!r} is neither an experiment number nor a commit of this repository") from None


def check_tag(tag: str) -> None:
    """A tag names the branch rsi/<tag>: refused before anything is written when git would refuse it."""
    ok = subprocess.run(["git", "check-ref-format", f"refs/heads/rsi/{tag}"], capture_output=True).returncode == 0
    if not ok:
        raise UserError(f"--tag {tag!r} cannot name a git branch (rsi/{tag})")
    if not tag or "/" in tag:
        raise UserError(f"--tag {tag!r}: use a plain name, without '/'")


def _git(cwd: Path, *args: str) -> None:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise UserError(f"git {args[0]} failed: {lines[-1] if lines else proc.returncode}")

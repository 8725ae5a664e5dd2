"""Edits written by a model: parsed from its reply, applied strictly, or refused with a reason.

The format (../shared/DESIGN.md): a line holding a file's path, then one or more SEARCH/REPLACE blocks; or a
path line followed by a fenced code block holding the whole new file. A reply may wrap its blocks in fences.
The first line starting with `Hypothesis:` is the hypothesis.

    train.py
    <<<<<<< SEARCH
    lr = 0.5
    =======
    lr = 0.12
    >>>>>>> REPLACE

A block applies where its search text occurs exactly once. When it occurs nowhere, a match that ignores
leading and trailing whitespace on each line is accepted if it is unique; anything else is refused, because
a guess at where the model meant would put code nobody asked for into a candidate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
FENCE = re.compile(r"^\s*(```|~~~)")
PATH = re.compile(r"^[\w.\-]+(/[\w.\-]+)*\.\w+$")  # a relative path with an extension, alone on its line


class EditError(ValueError):
    """Why a reply cannot become a candidate; the proposal is recorded as rejected with this reason."""


@dataclass
class FileEdit:
    path: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (search, replace)
    whole: str | None = None  # the whole new file, instead of blocks


@dataclass(frozen=True)
class Reply:
    hypothesis: str
    edits: list[FileEdit]


def parse(text: str) -> Reply:
    """Reads the hypothesis and the edits from a reply; raises EditError when there are none to read."""
    lines = text.replace("\r\n", "\n").split("\n")
    hypothesis = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("Hypothesis:")), "")
    edits: list[FileEdit] = []
    path: str | None = None
    fresh = False  # the path line came after the last block: a fence now may hold a whole file
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped == SEARCH:
            if path is None:
                raise EditError("a SEARCH block has no file path on a line before it")
            search, replace, i = _block(lines, i + 1)
            _edit_for(edits, path).blocks.append((search, replace))
            fresh = False
            continue
        if FENCE.match(line) and path is not None and fresh and _starts_whole_file(lines, i):
            body, i = _fenced(lines, i + 1)
            _edit_for(edits, path).whole = body
            path, fresh = None, False
            continue
        candidate = stripped.strip("`*:").strip()
        if candidate and PATH.match(candidate) and not stripped.startswith(("#", "Hypothesis")):
            path, fresh = candidate, True
        i += 1
    if not edits:
        raise EditError("the reply holds no edit in the SEARCH/REPLACE format")
    return Reply(hypothesis or "an edit proposed by a model", edits)


def _edit_for(edits: list[FileEdit], path: str) -> FileEdit:
    for e in edits:
        if e.path == path:
            return e
    edits.append(FileEdit(path))
    return edits[-1]


def _block(lines: list[str], i: int) -> tuple[str, str, int]:
    """Reads one block after its SEARCH line; returns (search, replace, index after REPLACE)."""
    search: list[str] = []
    while i < len(lines) and lines[i].strip() != DIVIDER:
        if lines[i].strip() == SEARCH:
            raise EditError("a SEARCH block has no ======= line")
        search.append(lines[i])
        i += 1
    if i == len(lines):
        raise EditError("a SEARCH block has no ======= line")
    replace: list[str] = []
    i += 1
    while i < len(lines) and lines[i].strip() != REPLACE:
        if lines[i].strip() in (SEARCH, DIVIDER):
            raise EditError("a SEARCH block has no >>>>>>> REPLACE line")
        replace.append(lines[i])
        i += 1
    if i == len(lines):
        raise EditError("a SEARCH block has no >>>>>>> REPLACE line")
    return "\n".join(search), "\n".join(replace), i + 1


def _starts_whole_file(lines: list[str], i: int) -> bool:
    """A fence right after a path line holds a whole file unless it wraps SEARCH/REPLACE blocks."""
    j = i + 1
    while j < len(lines) and not FENCE.match(lines[j]):
        if lines[j].strip() == SEARCH:
            return False
        j += 1
    return True


def _fenced(lines: list[str], i: int) -> tuple[str, int]:
    body: list[str] = []
    while i < len(lines) and not FENCE.match(lines[i]):
        body.append(lines[i])
        i += 1
    if i == len(lines):
        raise EditError("a fenced code block is not closed")
    return "\n".join(body) + "\n", i + 1


def apply(files: Mapping[str, str], edits: list[FileEdit]) -> dict[str, str]:
    """The new text of every edited file; raises EditError when a block does not apply exactly."""
    out: dict[str, str] = {}
    for e in edits:
        if e.whole is not None:
            out[e.path] = e.whole
            continue
        text = out.get(e.path, files.get(e.path))
        for search, replace in e.blocks:
            if text is None:
                if search.strip():
                    raise EditError(f"{e.path} does not exist: only an empty SEARCH can create it")
                text = ""
            text = _replace_once(text, search, replace, e.path)
        assert text is not None
        out[e.path] = text
    return out


def _replace_once(text: str, search: str, replace: str, path: str) -> str:
    if not search.strip():
        if text.strip():
            raise EditError(f"an empty SEARCH block in {path}, which is not empty")
        return replace + ("\n" if replace and not replace.endswith("\n") else "")
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1)
    if count > 1:
        raise EditError(f"the SEARCH text occurs {count} times in {path}: add lines to make it unique")
    lines = text.split("\n")
    want = [ln.strip() for ln in search.split("\n")]
    starts = [i for i in range(len(lines) - len(want) + 1) if [ln.strip() for ln in lines[i : i + len(want)]] == want]
    if len(starts) == 1:
        i = starts[0]
        return "\n".join([*lines[:i], *replace.split("\n"), *lines[i + len(want) :]])
    if starts:
        raise EditError(f"the SEARCH text matches {len(starts)} places in {path} (ignoring whitespace)")
    first = search.strip().split("\n")[0][:60]
    raise EditError(f"the SEARCH text was not found in {path} (it starts {first!r})")

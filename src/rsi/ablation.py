"""Ablation: what each kept change contributes to the final champion, measured on fresh seeds.

Each kept change is reverted alone from the final champion (leave-one-out: a three-way merge of the reverse
of its diff, where a later keep's lines win over the revert). Every variant and the champion run on the same
fresh seeds, in turn, seed by seed. A change's contribution is the variant's mean difference to the champion
on the same seeds (paired), signed so that positive means the change helps; it is judged two-sided against
the spread of those differences (pooled over every variant), at the judge's confidence split among the
variants:
- matters: the champion is worse without it;
- redundant: shown to deliver less than half of what it gained when it was kept (the whole interval is below
  that), and not shown to hurt;
- unclear: none of these at this many runs (more `--repeats` add runs to those recorded);
- hurts: the champion is better without it (it hurts in combination with the others);
- overwritten: a later keep rewrote every line it changed, so reverting it changes nothing.

`--simplify` then measures the champion without every change that is redundant or hurts, the same way, and
leaves it on the branch `rsi/<tag>-simplified`.

Runs are recorded in `.rsi/ablation.sqlite` (a ledger: experiment 0 the champion, one per variant) as they
happen, so an interrupted ablation resumes where it stopped; an ablation of an older champion is kept beside
it under its commit's name. Their output goes to `.rsi/ablation-logs/`, apart from the research's.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rsi.config import Config
from rsi.engine import measure_differences, measure_meta, refuse_changed_measure
from rsi.errors import UserError
from rsi.judge import pooled_noise, t_quantile
from rsi.ledger import Experiment, Ledger
from rsi.measure import FRESH, SubprocessMeasurer
from rsi.runner import kill_orphan
from rsi.workspace import Workspace, lock

FILE = "ablation.sqlite"
SIMPLIFIED = "simplified"  # the proposer name of the simplified champion's row
SEEDS = 4_000_000_000  # the first ablation seed: above every research seed (experiment i owns 10000*i + k, so
# up to experiment 399999), below 2**32 (numpy's limit)


@dataclass(frozen=True)
class Row:
    """One kept change, or the simplified champion."""

    exp_id: int  # the kept experiment of the research (0 for the simplified champion)
    hypothesis: str
    gain_when_kept: float | None  # its improvement over its champion when it was kept (positive is better)
    contribution: float | None  # champion without it, minus champion (positive: the change helps)
    half_width: float | None  # of the interval around the contribution
    label: str  # matters | redundant | hurts | unclear | overwritten | not measured (why)


def ablate(
    root: Path,
    cfg: Config,
    research: Ledger,
    repeats: int,
    simplify: bool,
    say: Callable[[str], None],
) -> list[Row]:
    """Measures every kept change of the research in `research` (a git research at `root`), resumably."""
    ws = Workspace(root)
    ws.open()
    try:
        return _ablate(ws, cfg, research, repeats, simplify, say)
    finally:
        ws.remove_all_worktrees()
        ws.close()


def _ablate(
    ws: Workspace, cfg: Config, research: Ledger, repeats: int, simplify: bool, say: Callable[[str], None]
) -> list[Row]:
    refuse_changed_measure(research, cfg)  # measured otherwise, no row would compare with the research's
    kept = research.experiments("verdict = 'keep' AND state = 'done'")
    if not kept:
        raise UserError("nothing was kept in this research: there is no change to ablate")
    champion = kept[-1].kept_commit
    assert champion is not None
    lock(ws.state / "ablation.lock")  # one ablation at a time; released when this process ends
    ledger = _ledger(ws, cfg, champion)
    stale = ledger.interrupted_runs()  # left by an ablation that was killed: its processes, then its rows
    for _, _, pid, started in stale:
        kill_orphan(pid, started)
    with ledger.transaction():
        ledger.drop_interrupted(stale)
    frozen = research.get_json("frozen") or {}
    measurer = SubprocessMeasurer(ws, cfg, ledger, frozen, logs="ablation-logs")  # apart from the research's
    tag = research.get("tag") or ""
    variants = _variants(ws, ledger, kept, champion, tag)
    seeds = [SEEDS + j for j in range(repeats)]
    say(f"ablation of {len(kept)} kept change(s) on {champion[:10]}, {repeats} runs each on shared fresh seeds")
    _measure(ws, ledger, measurer, [0, *variants], seeds, say)
    rows = results(research, ledger)
    drop = [r.exp_id for r in rows if r.label in ("redundant", "hurts")]
    if simplify and drop:
        simple = _simplified(ws, ledger, kept, drop, champion, tag)
        if simple is not None:
            _measure(ws, ledger, measurer, [0, simple], seeds, say)
        else:
            say("nothing to simplify: reverting the changes that are redundant or hurt leaves the champion as is")
    elif simplify:
        branch = f"refs/heads/rsi/{tag}-{SIMPLIFIED}"
        if ws.ref(branch) is not None:  # made from labels that have changed since: it would mislead
            ws.git("update-ref", "-d", branch)
            say(f"nothing to simplify now: branch rsi/{tag}-{SIMPLIFIED}, made from earlier labels, removed")
        else:
            say("nothing to simplify: no kept change is shown redundant or to hurt (more --repeats may show one)")
    rows = results(research, ledger)
    ledger.close()
    return rows


def _ledger(ws: Workspace, cfg: Config, champion: str) -> Ledger:
    """The ablation ledger of this champion, measured as rsi.toml measures now: resumed if it is that, else
    a new one (the older one is kept beside it, renamed after its champion's commit and the time)."""
    path = ws.state / FILE
    now = measure_meta(cfg)
    if path.exists():
        old = Ledger(path)
        mine, how = old.get("champion"), old.get("measure")
        old.close()
        if mine != champion or (how is not None and measure_differences(json.loads(how), now)):
            path.replace(path.with_name(f"ablation-{(mine or 'unknown')[:10]}-{int(time.time())}.sqlite"))
    ledger = Ledger(path)
    if ledger.get("champion") is None:
        ledger.set("champion", champion)
        ledger.set("measure", json.dumps(now, sort_keys=True))
    ledger.set("goal", cfg.metric.goal)  # the research's (checked): one an older rsi kept from another rsi.toml
    ledger.set("confidence", repr(cfg.judge.confidence))
    return ledger


def _variants(ws: Workspace, ledger: Ledger, kept: list[Experiment], champion: str, tag: str) -> list[int]:
    """One row per kept change: the champion without it, committed (ids follow the order of the keeps)."""
    if ledger.experiment(0) is None:
        with ledger.transaction():
            ledger.add_experiment(
                exp_id=0, parent=None, parent_commit=None, commit_sha=champion, proposer="champion",
                hypothesis="final champion", params={}, diff="",
            )  # fmt: skip
    ids = []
    for i, exp in enumerate(kept, start=1):
        ids.append(i)
        if ledger.experiment(i) is not None:
            continue
        assert exp.kept_commit is not None
        edits = revert(ws, exp.kept_commit, champion)
        sha, reason = None, ""
        if edits is None:
            reason = "cannot be reverted as text (a new, deleted or binary file, or later keeps build on it)"
        elif not edits:
            reason = "overwritten: later keeps rewrote every line it changed"
        else:
            sha = ws.commit_tree_with(champion, edits, f"rsi ablation: {tag} without #{exp.id}")
            ws.set_ref(f"refs/rsi/ablation/{champion[:12]}/{i}", sha)  # kept reachable, per champion
        with ledger.transaction():
            ledger.add_experiment(
                exp_id=i, parent=0, parent_commit=champion, commit_sha=sha, proposer="ablation",
                hypothesis=f"without #{exp.id}: {exp.hypothesis}", params={"kept": exp.id}, diff="",
                state="done" if reason else "proposed", reason=reason,
            )  # fmt: skip
    return ids


def revert(ws: Workspace, change: str, onto: str) -> dict[str, str] | None:
    """`onto`'s files with the change made by commit `change` undone, hunk by hunk; a hunk whose lines a later
    commit rewrote stays as that commit left it. {} when nothing changes; None when it cannot be done as text
    (or the Python it leaves does not parse)."""
    parent = ws.git("rev-parse", f"{change}^").strip()
    edits: dict[str, str] = {}
    for path in ws.git("diff", "--name-only", "-z", "--no-renames", parent, change).split("\0"):
        if not path:
            continue
        blobs = [ws.blob(c, path) for c in (parent, change, onto)]
        if any(b is None or b"\0" in b for b in blobs):
            return None
        try:
            before, after, now = (b.decode("utf-8") for b in blobs if b is not None)
        except UnicodeDecodeError:
            return None
        undone = undo(before, after, now)
        if path.endswith(".py") and undone != now and not _parses(undone):  # lines put back one by one among
            undone = undo(before, after, now, by_line=False)  # a later keep's may not make Python: hunks whole
            if not _parses(undone):  # a later keep builds on what it would take away
                return None
        if undone != now:
            edits[path] = undone
    return edits


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def undo(before: str, after: str, now: str, by_line: bool = True) -> str:
    """`now` with each hunk of the change before -> after reversed where `now` still holds that hunk's lines
    as the change left them (neighbouring lines may differ: knobs sit on adjacent lines); in a hunk that
    rewrote lines one for one, each line still as the change left it."""
    old, new, cur = before.splitlines(keepends=True), after.splitlines(keepends=True), now.splitlines(keepends=True)
    where: dict[int, int] = {}  # line of `after` -> the same line in `now`
    for tag, a1, a2, b1, _ in difflib.SequenceMatcher(None, new, cur, autojunk=False).get_opcodes():
        if tag == "equal":
            where.update({a1 + k: b1 + k for k in range(a2 - a1)})
    spans: list[tuple[int, int, list[str]]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        # lines rewritten one for one (knobs on adjacent lines): each still standing is put back, whatever a
        # later keep did to its neighbours
        if by_line and tag == "replace" and i2 - i1 == j2 - j1:
            spans += [(where[j1 + k], where[j1 + k] + 1, [old[i1 + k]]) for k in range(j2 - j1) if j1 + k in where]
        elif j2 > j1:  # lines the change wrote: still there, together, in `now`?
            at = [where.get(j) for j in range(j1, j2)]
            if None in at or at != list(range(at[0] or 0, (at[0] or 0) + j2 - j1)):
                continue
            spans.append((at[0] or 0, (at[0] or 0) + j2 - j1, old[i1:i2]))
        elif j1 in where or j1 - 1 in where or j1 == 0:  # lines the change removed: put back at the same place
            pos = where[j1] if j1 in where else (where[j1 - 1] + 1 if j1 - 1 in where else 0)
            spans.append((pos, pos, old[i1:i2]))
    for start, stop, lines in sorted(spans, reverse=True):
        cur[start:stop] = lines
    return "".join(cur)


def _measure(
    ws: Workspace,
    ledger: Ledger,
    measurer: SubprocessMeasurer,
    ids: list[int],
    seeds: list[int],
    say: Callable[[str], None],
) -> None:
    """Every row on every seed, seed by seed (the arms share whatever drift the machine has); runs already
    recorded are not repeated."""
    for j, seed in enumerate(seeds, start=1):
        for exp_id in ids:
            exp = ledger.experiment(exp_id)
            assert exp is not None
            if exp.commit_sha is None or any(r.seed == seed and r.kind == FRESH for r in exp.runs):
                continue
            wt = ws.checkout(f"ablation-{exp_id}", exp.commit_sha)
            measurer.measure(wt, exp_id, exp.commit_sha, FRESH, seed)
        say(f"seed {j}/{len(seeds)} done")


def _differences(ledger: Ledger, exp_id: int) -> list[float]:
    """Seed by seed, the row's metric minus the champion's, signed so that positive means the champion is
    better: paired on the seeds both have, so what a seed does to every variant alike cancels."""
    base, other = ledger.experiment(0), ledger.experiment(exp_id)
    assert base is not None and other is not None
    mine = {r.seed: r.metric for r in base.runs if r.status == "ok" and r.metric is not None}
    theirs = {r.seed: r.metric for r in other.runs if r.status == "ok" and r.metric is not None}
    sign = 1.0 if ledger.get("goal") == "minimize" else -1.0
    return [sign * (theirs[s] - mine[s]) for s in sorted(set(mine) & set(theirs))]


def _contribution(ledger: Ledger, exp_id: int) -> tuple[float | None, float | None]:
    """(the mean paired difference; the half-width of its two-sided interval). The spread of the differences
    is pooled over every measured variant, and the confidence is split among them (Bonferroni): with several
    kept changes labelled at once, the chance that any label is wrong stays within the judge's confidence."""
    diffs = _differences(ledger, exp_id)
    if not diffs:
        return None, None
    rows = [row.id for row in _measured(ledger)]
    noise = pooled_noise([_differences(ledger, i) for i in rows])
    if noise is None or noise.dof < 1:
        return statistics.fmean(diffs), None
    level = 1 - (1 - float(ledger.get("confidence") or 0.99)) / max(1, len(rows))
    t = t_quantile(0.5 + level / 2, noise.dof)
    return statistics.fmean(diffs), t * noise.sd / math.sqrt(len(diffs))


def _measured(ledger: Ledger) -> list[Experiment]:
    """The variants measured against the champion. The simplified champion is left out of the spread and of
    the split: measuring it must not change the labels it was made from."""
    return [row for row in ledger.experiments("id > 0") if row.commit_sha is not None and row.proposer != SIMPLIFIED]


def _label(contribution: float | None, half: float | None, gained: float | None) -> str:
    """What a change's contribution now says, against what it `gained` when it was kept."""
    if contribution is None:
        return "not measured: no valid run"
    if half is None:
        return "not measured: no noise estimate"
    if contribution > half:
        return "matters"
    if contribution < -half:
        return "hurts"
    if gained is not None and gained > 0 and contribution + half < gained / 2:
        return "redundant"
    return "unclear"


def results(research: Ledger, ledger: Ledger) -> list[Row]:
    """The table, from what is recorded: one row per kept change, then the simplified champion made from
    these labels, if it was measured (one made from labels that have changed since is not shown)."""
    kept = {e.id: e for e in research.experiments("verdict = 'keep' AND state = 'done'")}
    rows = []
    simplified = []
    for row in ledger.experiments("id > 0"):
        if row.proposer == SIMPLIFIED:
            simplified.append(row)
            continue
        exp = kept.get(int(row.params.get("kept", -1)))
        if exp is None:
            continue
        gained = None if exp.ci is None else (exp.ci[0] + exp.ci[1]) / 2  # the judge's estimate when it kept it
        if row.commit_sha is None:
            label = "overwritten" if row.reason.startswith("overwritten") else f"not measured: {row.reason}"
            rows.append(Row(exp.id, exp.hypothesis, gained, None, None, label))
            continue
        contribution, half = _contribution(ledger, row.id)
        rows.append(Row(exp.id, exp.hypothesis, gained, contribution, half, _label(contribution, half, gained)))
    drop = [r.exp_id for r in rows if r.label in ("redundant", "hurts")]
    for row in simplified:
        if row.params.get("without") != drop or row.commit_sha is None:
            continue
        contribution, half = _contribution(ledger, row.id)
        label = _label(contribution, half, None)
        words = {"matters": "worse than the champion", "unclear": "as good", "hurts": "better than the champion"}
        label = f"{words.get(label, label)}: branch rsi/{research.get('tag') or ''}-{SIMPLIFIED}"
        rows.append(Row(0, f"simplified champion, {row.hypothesis}", None, contribution, half, label))
    return rows


def recorded(root: Path, research: Ledger) -> list[Row]:
    """The ablation of the research's final champion, if one was measured (for the report), else []."""
    path = root / ".rsi" / FILE
    if not path.is_file():
        return []
    ledger = Ledger(path, readonly=True)
    try:
        head = research.db.execute(
            "SELECT kept_commit FROM experiments WHERE verdict = 'keep' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return results(research, ledger) if head and ledger.get("champion") == head[0] else []
    finally:
        ledger.close()


def _simplified(
    ws: Workspace, ledger: Ledger, kept: list[Experiment], drop: list[int], champion: str, tag: str
) -> int | None:
    """The champion without every change in `drop`, reverted one after the other; its row id."""
    for row in ledger.experiments("proposer = ?", (SIMPLIFIED,)):
        if row.params.get("without") == drop:  # made and measured before: resumed
            if row.commit_sha is not None:
                ws.set_ref(f"refs/heads/rsi/{tag}-{SIMPLIFIED}", row.commit_sha)
            return row.id
    row_id = ledger.next_id()  # labels changed since an earlier one (more runs): a new row, the old one stays
    head = champion
    for exp in kept:
        if exp.id in drop and exp.kept_commit is not None:
            edits = revert(ws, exp.kept_commit, head)
            if edits:
                head = ws.commit_tree_with(head, edits, f"rsi ablation: without #{exp.id}")
    if head == champion:
        return None
    ws.set_ref(f"refs/heads/rsi/{tag}-{SIMPLIFIED}", head)
    with ledger.transaction():
        ledger.add_experiment(
            exp_id=row_id, parent=0, parent_commit=champion, commit_sha=head, proposer=SIMPLIFIED,
            hypothesis="without " + ", ".join(f"#{i}" for i in drop), params={"without": drop}, diff="",
        )  # fmt: skip
    return row_id

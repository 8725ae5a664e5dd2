"""What an LLM researcher is told: the research directions, the code, the memory of the ledger, the format.

Held-out numbers never appear: the memory is built from `Context.history()`, which has dropped holdout runs,
and from no other field of the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rsi.ledger import Experiment

SYSTEM = """\
You are a careful ML research engineer improving code by experiments. Each reply proposes ONE change, tested \
by an automated harness that runs it several times with different seeds and keeps it only when the gain is \
statistically real. Prefer changes that could plausibly beat the noise floor; do not repeat what failed.

Reply with exactly this shape:
Hypothesis: <one line: what you change and why it should help>
<path of the file, alone on its line>
<<<<<<< SEARCH
<lines copied exactly from the current file>
=======
<the new lines>
>>>>>>> REPLACE

Rules: the SEARCH text must occur exactly once in the current file; copy it character for character, with \
enough lines to be unique. Use several blocks for several places. For a small file you may instead give its \
path and then its whole new content in one fenced code block. Edit only the editable files. Never edit the \
read-only files. Do not touch seeds, time budgets or the evaluation."""

HISTORY = 30  # experiments shown, most recent last
DIFF_CHARS = 700
TAIL_CHARS = 600


def user_prompt(
    *,
    program: str,
    metric: str,
    goal: str,
    files: Mapping[str, str],
    frozen: Sequence[str],
    history: Sequence[Experiment],
    noise_sd: float | None,
    detectable: float | None,
    ideas: Sequence[str] = (),
) -> str:
    parts = []
    if program.strip():
        parts.append(f"# Research directions (program.md)\n{program.strip()}")
    if ideas:
        parts.append("# Ideas from the researcher, newest last (consider them)\n" + "\n".join(f"- {i}" for i in ideas))
    better = "lower" if goal == "minimize" else "higher"
    floor = "unknown yet" if noise_sd is None else f"{noise_sd:.4g} (run-to-run standard deviation)"
    smallest = "" if detectable is None else f"; the smallest improvement it reliably detects: {detectable:.4g}"
    parts.append(f"# Goal\nMake `{metric}` {better}. Noise floor: {floor}{smallest}.")
    for path, text in sorted(files.items()):
        parts.append(f"# Editable file: {path}\n```\n{text.rstrip()}\n```")
    if frozen:
        parts.append("# Read-only files (the harness uses them; edits to them are refused)\n" + ", ".join(frozen))
    if history:
        parts.append("# Experiments so far (oldest first)\n" + "\n\n".join(_memory(e) for e in history[-HISTORY:]))
    parts.append("Propose the next experiment now, in the format given.")
    return "\n\n".join(parts)


def _memory(e: Experiment) -> str:
    """One experiment as the model sees it: what, how it went, and why it ended as it did."""
    mean = e.mean()
    line = f"- #{e.id} [{e.verdict or 'running'}, {e.status or '-'}] {e.hypothesis}"
    if mean is not None:
        line += f"; mean {mean:.5g} over {len(e.valid())} run(s)"
    if e.ci is not None:
        line += f"; improvement interval [{e.ci[0]:.4g}, {e.ci[1]:.4g}]"
    if e.reason:
        line += f"; {e.reason[:200]}"
    if e.diff:
        diff = e.diff if len(e.diff) <= DIFF_CHARS else e.diff[:DIFF_CHARS] + "\n[... diff cut]"
        line += f"\n```diff\n{diff.rstrip()}\n```"
    if e.status in ("crash", "timeout", "oom", "no_metric", "invalid_metric"):
        tail = next((r.stderr_tail or r.stdout_tail for r in reversed(e.runs) if r.status != "ok"), "")
        if tail.strip():
            line += f"\nerror tail:\n```\n{tail[-TAIL_CHARS:].rstrip()}\n```"
    return line


def fix_prompt(crashed: Experiment, files: Mapping[str, str], tail: str) -> str:
    """A crashed candidate goes back to its proposer: its code, its error, one job."""
    parts = [
        f"# Your change #{crashed.id} crashed\nHypothesis: {crashed.hypothesis}\nIts result: {crashed.reason[:300]}",
        f"# Error tail\n```\n{tail[-TAIL_CHARS * 2 :].rstrip()}\n```",
    ]
    for path, text in sorted(files.items()):
        parts.append(f"# File with your change applied: {path}\n```\n{text.rstrip()}\n```")
    parts.append(
        "Fix the bug so the change does what it meant to do, in the same format (SEARCH text from the files "
        "above). Keep the hypothesis line, prefixed with 'fix: '."
    )
    return "\n\n".join(parts)

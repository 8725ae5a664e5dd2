"""`rsi init`: write an `rsi.toml` that explains itself, or one matched to a known layout (autoresearch)."""

from __future__ import annotations

from pathlib import Path

from rsi.config import CONFIG_NAME
from rsi.errors import UserError

TEMPLATE = """\
# rsi.toml: what rsi may change, how to run it, how to read the result. Paths are relative to this folder,
# which must be the root of a git repository. Durations: 90s, 10m, 2h. Sizes: 512MB (10^6), 4GiB (2^30).

[task]
name = "{name}"
editable = [{editable}]          # globs of files a proposer may change
frozen = [{frozen}]              # globs hashed at the start; a run that changes them is 'tampered'
command = "{command}"             # run from the root of a fresh checkout of each candidate
timeout = "{timeout}"                     # wall clock, enforced by killing the whole process group
# memory = "4GB"                      # resident memory of the whole process tree
# budget = "5m"                       # reaches the script as RSI_BUDGET_SECONDS: budgets belong to the harness
# setup = "python prepare.py"         # runs once before the baseline; put data in $RSI_CACHE_DIR

[metric]
name = "{metric}"
goal = "{goal}"                   # or "maximize": say which, rsi never guesses
pattern = '{pattern}'    # regex on stdout (then stderr); the first group is the value; the last match wins
# file = "metrics.json"               # or read it from a JSON file the run writes ...
# key = "val_loss"                    # ... under this key
# evaluator = "python evaluate.py"    # a frozen command run after `command`; its output is the metric

# [holdout]                           # optional: data no proposer ever sees, run for the baseline and for keeps
# command = "python evaluate.py --split test"
# pattern = '^test_loss:\\s*(\\S+)'

[judge]
baseline_repeats = 5                  # runs of the baseline with different RSI_SEED, to measure the noise
min_delta = 0.0                       # a candidate must beat the champion by more than this

[proposer]
kind = "knobs"                        # knobs: tunes the numeric literals of the editable files, offline
"""


COMMENT_COLUMN = 38  # where the template's inline comments start


def _aligned(text: str) -> str:
    """The template with its filled-in lines' comments moved back to the column of the others."""
    lines = []
    for line in text.splitlines():
        code, sep, comment = line.rpartition("  # ")
        if sep and not line.startswith("#") and code.strip() and f"  # {comment}\n" in TEMPLATE:
            line = f"{code.rstrip():<{COMMENT_COLUMN - 1}} # {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _quote(globs: list[str]) -> str:
    return ", ".join(f'"{g}"' for g in globs)


def render(root: Path, layout: str | None) -> str:
    name = root.resolve().name or "task"
    if layout == "autoresearch":
        missing = [f for f in ("train.py", "prepare.py") if not (root / f).is_file()]
        if missing:
            raise UserError(f"not an autoresearch layout: {', '.join(missing)} missing in {root}")
        return _aligned(
            TEMPLATE.format(
                name=name,
                editable=_quote(["train.py"]),
                frozen=_quote(["prepare.py"] + (["program.md"] if (root / "program.md").is_file() else [])),
                command="python train.py",
                timeout="15m",
                metric="val_bpb",
                goal="minimize",
                pattern="^val_bpb:\\s*(\\S+)",
            )
        )
    if layout is not None:
        raise UserError(f"unknown layout {layout!r} for --from (known: autoresearch)")
    scripts = sorted(p.name for p in root.glob("*.py"))
    main = "train.py" if "train.py" in scripts else (scripts[0] if scripts else "main.py")
    return _aligned(
        TEMPLATE.format(
            name=name,
            editable=_quote([main]),
            frozen=_quote([s for s in scripts if s != main]),
            command=f"python {main}",
            timeout="10m",
            metric="loss",
            goal="minimize",
            pattern="^loss:\\s*(\\S+)",
        )
    )


def write(root: Path, layout: str | None, force: bool = False) -> Path:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    path = root / CONFIG_NAME
    if path.exists() and not force:
        raise UserError(f"{path} already exists (use --force to overwrite it)")
    path.write_text(render(root, layout), encoding="utf-8")
    return path

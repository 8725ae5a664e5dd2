"""`rsi report`: one self-contained HTML page that tells a research's story to someone who was not watching.

Everything comes from the ledger opened read-only, so a report can be written while a research is running.
The page embeds its pictures as data URIs and carries its own CSS, so it can be mailed or attached as is.
"""

from __future__ import annotations

import base64
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from rsi.ablation import recorded
from rsi.errors import UserError
from rsi.judge import Goal
from rsi.ledger import Experiment, Ledger
from rsi.status import status_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GREEN, GREY, RED, BLUE, ORANGE = "#1a7f37", "#8c959f", "#cf222e", "#0969da", "#bc4c00"


@dataclass
class Row:
    """One experiment as the report shows it; `group` decides how it is drawn."""

    id: int
    proposer: str
    hypothesis: str
    metric: float | None
    sd: float | None  # sample standard deviation of its valid runs, when it has 2+
    runs: int
    status: str
    verdict: str
    reason: str
    holdout: float | None
    duration_s: float | None
    diff: str
    group: str  # champion (baseline or kept) | tried | failed | rejected | pending
    reverted: bool  # screening kept it, replication did not
    ci: list[float] | None  # bounds on its improvement over the champion
    flag: str | None  # held-out disagrees with selection


def _row(e: Experiment, j: dict[str, Any]) -> Row:
    """`j` is the experiment's entry in `status_json`, so the report and `rsi status` never disagree."""
    valid = e.valid()
    if e.state != "done":
        group = "pending"
    elif j["status"] == "rejected":
        group = "rejected"
    elif j["status"] != "ok" or e.mean() is None:
        group = "failed"
    elif j["verdict"] in ("baseline", "keep"):
        group = "champion"
    else:
        group = "tried"
    return Row(
        id=e.id,
        proposer=e.proposer,
        hypothesis=e.hypothesis,
        metric=e.mean(),
        sd=statistics.stdev(valid) if len(valid) >= 2 else None,
        runs=len(e.metrics()),
        status=j["status"],
        verdict=j["verdict"],
        reason=e.reason,
        holdout=e.mean("holdout") if group == "champion" else None,
        duration_s=j["duration_s"],
        diff=e.diff,
        group=group,
        reverted=bool(j["reverted"]),
        ci=j["ci"],
        flag=j["holdout_flag"],
    )


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _new_figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure on the Agg canvas, never pyplot: no display, no global state shared with the caller."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # (here: importing it takes most of a second)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _measured(rows: list[Row], group: str) -> list[tuple[Row, float]]:
    return [(r, r.metric) for r in rows if r.group == group and r.metric is not None]


def staircase(rows: list[Row]) -> tuple[list[int], list[float]]:
    """The champion's value over experiment ids: the baseline, then each kept experiment, held to the last id."""
    champs = _measured(rows, "champion")
    if not champs:
        return [], []
    xs, ys = [r.id for r, _ in champs], [y for _, y in champs]
    return [*xs, max(r.id for r in rows)], [*ys, ys[-1]]


def _window(rows: list[Row], band: tuple[float, float] | None) -> tuple[float, float]:
    """The y range to show: every champion and noise band, and the other points unless they are far outliers."""
    core = [v for r, y in _measured(rows, "champion") for v in (y - (r.sd or 0), y + (r.sd or 0))]
    core += list(band or ())
    others = [y for _, y in _measured(rows, "tried")]
    if len(core + others) >= 4:
        q1, _, q3 = statistics.quantiles(core + others, n=4)
        fence = 3 * (q3 - q1)
        others = [v for v in others if q1 - fence <= v <= q3 + fence]
    lo, hi = min(core + others), max(core + others)
    pad = (hi - lo) * 0.12 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


def progress_png(rows: list[Row], task: str, metric: str, goal: Goal, noise: float | None) -> bytes:
    """The running-best staircase over experiment ids, with every tried and failed experiment around it."""
    fig, ax = _new_figure(10, 5.2)
    ax.set_xlabel("experiment id")
    ax.set_ylabel(f"{metric} ({goal}; mean of runs)")
    ax.set_title(f"{task}: {metric}, {len(rows)} experiments\nerror bars: ±1 standard deviation over repeated runs")
    champs = _measured(rows, "champion")
    if not champs:
        ax.text(0.5, 0.5, "no measured experiment yet", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)
    base = rows[0].metric if rows[0].group == "champion" else None
    band = (base - noise, base + noise) if base is not None and noise else None
    lo, hi = _window(rows, band)
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes fraction
    if band is not None:
        ax.axhspan(*band, color=BLUE, alpha=0.08, lw=0)
        ax.axhline(band[0], color=BLUE, ls="--", lw=1, label=f"baseline ± noise sd ({noise:.3g})")
        ax.axhline(band[1], color=BLUE, ls="--", lw=1)
    xs, ys = staircase(rows)
    ax.step(xs, ys, where="post", color=GREEN, lw=2, label="running best (baseline, then kept)", zorder=3)
    ax.scatter(xs[:-1], ys[:-1], color=GREEN, s=36, zorder=4)
    ax.scatter([champs[0][0].id], [champs[0][1]], color="black", marker="s", s=40, zorder=5, label="baseline")
    tried = _measured(rows, "tried")
    inside = [(r, y) for r, y in tried if lo <= y <= hi]
    if inside:
        ax.scatter(
            [r.id for r, _ in inside], [y for _, y in inside], color=GREY, s=22, label="discarded / inconclusive"
        )
    reverted = [(r, y) for r, y in inside if r.reverted]
    if reverted:
        ax.scatter([r.id for r, _ in reverted], [y for _, y in reverted], facecolors="none", edgecolors=ORANGE,
                   s=70, lw=1.5, label="passed screening, failed replication")  # fmt: skip
    outside = [(r, y) for r, y in tried if not lo <= y <= hi]
    for r, y in outside:
        at = 0.99 if y > hi else 0.01
        ax.scatter([r.id], [at], transform=edge, color=GREY, marker="^" if y > hi else "v", s=30)
        ax.annotate(f"{y:.3g}", (r.id, at), xycoords=edge, fontsize=7, color=GREY,
                    xytext=(4, -8 if y > hi else 2), textcoords="offset points")  # fmt: skip
    if outside:
        ax.scatter([], [], color=GREY, marker="^", s=30, label="discarded, off the chart (value shown)")
    failed = [r for r in rows if r.group == "failed"]
    if failed:  # no metric to place them by: on the worse edge
        at = 0.97 if goal == "minimize" else 0.03
        kinds = ", ".join(sorted({r.status for r in failed}))
        ax.scatter([r.id for r in failed], [at] * len(failed), transform=edge, color=RED, marker="x",
                   s=40, label=f"failed, no metric ({kinds})", zorder=5)  # fmt: skip
    for r, y in champs + inside:
        if r.sd is not None:
            color = GREEN if r.group == "champion" else GREY
            ax.errorbar([r.id], [y], yerr=[r.sd], fmt="none", ecolor=color, capsize=3, lw=1)
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.5, max(r.id for r in rows) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.25)
    fig.legend(fontsize=8, loc="outside lower center", ncols=3, frameon=False)  # never over the points
    return _png(fig)


def holdout_png(rows: list[Row], metric: str, goal: Goal) -> bytes:
    """Selection metric against held-out metric for each champion: do the gains carry over to unseen data?"""
    fig, ax = _new_figure(7, 4.6)
    pts = [(r.id, y, r.holdout) for r, y in _measured(rows, "champion") if r.holdout is not None]
    ax.plot([x for _, x, _ in pts], [h for _, _, h in pts], color=GREY, lw=1, zorder=1)
    ax.scatter([x for _, x, _ in pts], [h for _, _, h in pts], color=GREEN, s=36, zorder=2)
    for exp_id, x, h in pts:
        ax.annotate(f"#{exp_id}", (x, h), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel(f"selection {metric} (mean of runs)")
    ax.set_ylabel("held-out metric (mean)")
    better = "lower" if goal == "minimize" else "higher"
    ax.set_title(f"baseline and kept experiments, joined in order ({better} is better)")
    ax.grid(alpha=0.25)
    return _png(fig)


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.6g}"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _diff_lines(diff: str) -> list[tuple[str, str]]:
    """(css class, text) per line, so the template can colour a diff without trusting its content."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            cls = "hdr"
        elif line.startswith("@@"):
            cls = "hunk"
        else:
            cls = {"+": "add", "-": "del"}.get(line[:1], "ctx")
        out.append((cls, line))
    return out


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rsi", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["duration"] = _duration
    env.filters["diff_lines"] = _diff_lines
    return env


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def read(ledger: Ledger) -> tuple[dict[str, Any], list[Row]]:
    """`status_json` and the rows drawn, from one snapshot of the ledger even while a research writes to it."""
    ledger.db.execute("BEGIN")
    try:
        status = status_json(ledger)
        by_id = {j["id"]: j for j in status["experiments"]}
        return status, [_row(e, by_id[e.id]) for e in ledger.experiments() if e.id in by_id]
    finally:
        ledger.db.execute("ROLLBACK")


def write_report(root: Path, out: Path | None = None) -> Path:
    """Write the HTML report (and progress.png beside it) from the ledger under `root`; return the HTML path."""
    out = out if out is not None else root / ".rsi" / "report.html"
    if out.is_dir():
        raise UserError(f"cannot write the report to {out}: it is a folder, give a file name")
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    if not out.parent.is_dir():
        ledger.close()
        raise UserError(f"cannot write the report to {out}: folder {out.parent} does not exist")
    try:
        status, rows = read(ledger)
        ablation = recorded(root, ledger)
    finally:
        ledger.close()
    goal: Goal = "maximize" if status["goal"] == "maximize" else "minimize"
    task, metric = status["task"] or root.name, status["metric"] or "metric"
    progress = progress_png(rows, task, metric, goal, status["noise_sd"])
    has_holdout = any(r.holdout is not None for r in rows)
    context: dict[str, Any] = {
        "task": task,
        "metric": metric,
        "goal": goal,
        "status": status,
        "rows": rows,
        "kept": [r for r in rows if r.verdict == "keep"],
        "verdicts": sorted(Counter(r.verdict for r in rows).items()),
        "statuses": sorted(Counter(r.status for r in rows).items()),
        "progress_uri": _data_uri(progress),
        "holdout_uri": _data_uri(holdout_png(rows, metric, goal)) if has_holdout else None,
        "ablation": ablation,
    }
    html = _environment().get_template("report.html.j2").render(context)
    out.write_text(html, encoding="utf-8")
    (out.parent / "progress.png").write_bytes(progress)
    return out

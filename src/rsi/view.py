"""The live terminal view: one line per experiment, the best so far, elapsed time and what remains."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rsi.ledger import Experiment
from rsi.status import experiment_status

_STYLE = {"keep": "bold green", "baseline": "cyan", "discard": "dim", "inconclusive": "yellow"}
_ROWS = 25
QUIET_S = 300.0  # plain output: a line saying what still runs after this long without one


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.5g}"


class LiveView:
    """A listener for `Research`: a live table on a terminal, plain lines elsewhere (logs, CI)."""

    def __init__(self, console: Console, goal: str, max_experiments: int | None, time_budget_s: float | None):
        self.console = console
        self.goal = goal
        self.max_experiments = max_experiments
        self.time_budget_s = time_budget_s
        self.started = time.monotonic()
        self.rows: dict[int, tuple[Experiment, str]] = {}
        self.durations: list[float] = []
        self.messages: list[str] = []
        self.live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None
        self.printed = time.monotonic()  # plain output: when the last line was
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="rsi-view", daemon=True)

    def __enter__(self) -> LiveView:
        if self.live:
            self.live.__enter__()
        else:  # a log (nohup, CI) gets no live table: a long run must not look like a hang
            self._beat.start()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(t, v, tb)

    def _heartbeat(self, every: float = QUIET_S) -> None:
        while not self._done.wait(min(every, 30.0)):
            quiet = time.monotonic() - self.printed
            running = sorted(i for i, (_, event) in list(self.rows.items()) if event == "running")
            if quiet >= every and running:
                ids = ", ".join(f"#{i}" for i in running)
                self._print(f"rsi: {ids} still running ({quiet / 60:.0f} min since the last line)")

    def _print(self, line: str) -> None:
        self.printed = time.monotonic()
        self.console.print(line, highlight=False, soft_wrap=True, markup=False)

    def __call__(self, event: str, exp: Experiment | None, message: str) -> None:
        if exp is not None:
            self.rows[exp.id] = (exp, "done" if event == "reverted" else event)  # a landed keep, undone
            if event == "done" and exp.finished:
                self.durations.append(exp.finished - exp.created)
        elif message:
            self.messages.append(message)
        if self.live:
            self.live.update(self._render())
        elif exp is not None and event == "done":
            self._print(self._line(exp))
        elif exp is None and message:  # brackets stay brackets ([[constraints]], a hypothesis's [x])
            self._print(f"rsi: {message}")

    @property
    def best(self) -> float | None:
        """The champion's mean: the last keep's (a resumed research's too; not a reverted one's), or the
        baseline's."""
        kept = [e for e, _ in self.rows.values() if e.id == 0 or e.verdict == "keep"]
        return max(kept, key=lambda e: e.id).mean() if kept else None

    def _remaining(self) -> str:
        if not self.durations:
            return "?"
        per = sum(self.durations[-10:]) / len(self.durations[-10:])
        left: list[float] = []
        if self.max_experiments is not None:
            left.append(max(0, self.max_experiments - len(self.rows)) * per)
        if self.time_budget_s is not None:
            left.append(max(0.0, self.time_budget_s - (time.monotonic() - self.started)))
        return f"{min(left):.0f}s" if left else "until stopped"

    def _line(self, e: Experiment) -> str:
        verdict = "baseline" if e.id == 0 else (e.verdict or "pending")
        return (
            f"#{e.id:<4} {e.proposer:<8} {e.hypothesis[:48]:<48} {_fmt(e.mean()):>10} "
            f"{experiment_status(e):<9} {verdict:<12} best {_fmt(self.best)}"
        )

    def _render(self) -> Group:
        table = Table(expand=True, show_edge=False)
        for col in ("#", "proposer", "hypothesis", "metric", "status", "verdict"):
            table.add_column(col, no_wrap=col != "hypothesis", justify="right" if col == "metric" else "left")
        for exp_id in sorted(self.rows)[-_ROWS:]:
            e, event = self.rows[exp_id]
            verdict = "baseline" if e.id == 0 else (e.verdict or ("running" if event == "running" else "pending"))
            table.add_row(
                str(e.id),
                e.proposer,
                e.hypothesis,
                _fmt(e.mean()) if event == "done" else "…",
                experiment_status(e) if event == "done" else "-",
                Text(verdict, style=_STYLE.get(verdict, "")),
            )
        elapsed = time.monotonic() - self.started
        head = Text(
            f"best {_fmt(self.best)} ({self.goal})   experiments {len(self.rows)}   "
            f"elapsed {elapsed:.0f}s   remaining {self._remaining()}",
            style="bold",
        )
        return Group(head, table, *(Text(m, style="dim") for m in self.messages[-3:]))

"""The `rsi` command. Bad input is one line on stderr and exit code 2; nothing recorded is ever lost."""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from rsi import interrupt
from rsi.config import Config, load_config, parse_duration
from rsi.demo import DEMO_BUDGET
from rsi.demo import check_requirements as check_demo
from rsi.demo import create as create_demo
from rsi.demo import default_dir as demo_dir
from rsi.doctor import Doctor
from rsi.engine import Limits, Research, editable_files
from rsi.errors import UserError
from rsi.fork import check_tag
from rsi.init import write as write_config
from rsi.ledger import Ledger
from rsi.program import apply_program, default_program, load_program
from rsi.proposer import KnobsProposer, Proposer
from rsi.report import write_report
from rsi.researcher import LLMProposer
from rsi.status import standing, status_json
from rsi.store import Store
from rsi.swarm import SwarmProposer
from rsi.view import LiveView
from rsi.workspace import Workspace

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts hold [brackets] (rsi[serve], [[proposer.models]]): no markup
    help="Autonomous research on code, judged honestly.",
)
err = Console(stderr=True)
out = Console(soft_wrap=True)

DirArg = Annotated[Path, typer.Argument(help="the task's repository (holds rsi.toml)", exists=True, file_okay=False)]


def fail(message: str) -> NoReturn:
    err.print(f"rsi: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(2)


def make_proposer(cfg: Config, name: str) -> Callable[[Store, str], Proposer]:
    def factory(ws: Store, start_commit: str) -> Proposer:
        if name == "knobs":
            files = editable_files(ws, start_commit, cfg)
            proposer = KnobsProposer(files, cfg.knobs, cfg.metric.goal, seed=cfg.knobs.seed)
            if not proposer.knobs:
                raise UserError(
                    "the knobs proposer found no tunable literal (module-level int, float or bool assignment) "
                    f"in {', '.join(files) or 'the editable files'}"
                )
            return proposer
        if name in ("llm", "swarm"):
            program = ws.read(start_commit, "program.md") if ws.files(start_commit, ["program.md"]) else ""
            program = "\n\n".join(part for part in (cfg.proposer.prompt.strip(), program) if part)
            frozen = ws.files(start_commit, cfg.task.frozen)
            metric, goal = cfg.metric.name, cfg.metric.goal
            if name == "llm":
                return LLMProposer(cfg.proposer, program=program, frozen=frozen, metric=metric, goal=goal)
            members: list[Proposer] = []
            files = editable_files(ws, start_commit, cfg)
            knobs = KnobsProposer(files, cfg.knobs, cfg.metric.goal, seed=cfg.knobs.seed)
            if knobs.knobs:
                members.append(knobs)
            for i, m in enumerate(cfg.proposer.models):
                one = cfg.proposer.model_copy(update={"models": [m]})
                twice = sum(x.model == m.model for x in cfg.proposer.models) > 1  # one model at two temperatures
                who = f"llm:{m.model}" + (f"#{i + 1}" if twice else "")
                members.append(LLMProposer(one, program=program, frozen=frozen, metric=metric, goal=goal, name=who))
            if len(members) < 2:
                raise UserError("proposer.kind = 'swarm' needs at least two members: knobs and [[proposer.models]]")
            return SwarmProposer(members, cfg.proposer.weights)
        raise UserError(f"proposer {name!r} is not available (available: knobs, llm, swarm)")

    return factory


@app.command()
def init(
    directory: DirArg = Path("."),
    from_layout: Annotated[str | None, typer.Option("--from", help="a known layout: autoresearch")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing rsi.toml")] = False,
) -> None:
    """Write an rsi.toml for the repository in DIRECTORY."""
    try:
        path = write_config(directory, from_layout, force)
        load_config(directory)
    except UserError as e:
        fail(str(e))
    out.print(
        f"wrote {path}: check editable, command and metric, commit it (`rsi fork` researches the task as a "
        "commit has it), then `rsi run`",
        highlight=False,
    )
    if not any(directory.glob("*.py")) and from_layout is None:
        out.print(
            "note: no Python script here, so editable and command name main.py, which does not exist: write them "
            "for your files",
            highlight=False,
        )
    try:
        Workspace(directory).check_repository()
    except UserError as e:  # not an error yet: the user may init git next; `rsi run` refuses until then
        out.print(f"note: `rsi run` will refuse to start here until this is fixed: {e}", highlight=False, markup=False)


@app.command()
def run(
    directory: DirArg = Path("."),
    proposer: Annotated[str | None, typer.Option(help="knobs (offline), llm or swarm ([[proposer.models]])")] = None,
    max_experiments: Annotated[
        int | None, typer.Option(min=1, help="total experiments in the ledger, baseline included")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option(help="end within one run of this long (10m, 2h); an unfinished experiment resumes")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="research branch rsi/<tag> (default: today's date)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="experiments at once, each in its own CPU slot")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs to use, e.g. 0,1,2,3: one experiment per GPU")] = None,
    executor: Annotated[str | None, typer.Option(help="local (default) or ray")] = None,
    address: Annotated[str | None, typer.Option(help="the Ray cluster to join (default: a new local one)")] = None,
    program: Annotated[
        Path | None, typer.Option(help="the research program (default: the one rsi ships, rsi/programs/default.py)")
    ] = None,
) -> None:
    """Run or resume the research in DIRECTORY."""
    try:
        if tag is not None:
            check_tag(tag)
        cfg = apply_program(load_config(directory), load_program(program) if program else default_program())
        budget = parse_duration(time_budget) if time_budget is not None else None
        cfg = _with_executor(cfg, workers, gpus, executor, address)
    except (UserError, ValueError) as e:
        fail(str(e) if isinstance(e, UserError) else f"--time-budget: {e}")
    research = _research(directory, cfg, proposer or cfg.proposer.kind, Limits(max_experiments, budget), tag)
    s = research.summary()
    if s["baseline"] is None:  # a budget spent before the first run (the stop line said which)
        return
    out.print(
        f"baseline {s['baseline']:.6g} -> best {s['best']:.6g} (experiment {s['best_id']}) after "
        f"{s['experiments']} experiments; kept changes are on branch {s['branch']}",
        highlight=False,
    )


def _with_executor(cfg: Config, workers: int | None, gpus: str | None, kind: str | None, address: str | None) -> Config:
    """Command-line flags over rsi.toml's [executor]."""
    update: dict[str, object] = {}
    if workers is not None:
        update["workers"] = workers
    if gpus is not None:
        try:
            update["gpus"] = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus {gpus!r}: give GPU indices separated by commas, e.g. 0,1,2,3") from None
    if kind is not None:
        if kind not in ("local", "ray"):
            raise UserError(f"--executor {kind!r}: local or ray")
        update["kind"] = kind
    if address is not None:
        if update.get("kind", cfg.executor.kind) != "ray":
            raise UserError('--address is the Ray cluster to join: add --executor ray (or kind = "ray" in [executor])')
        update["address"] = address
    return cfg.model_copy(update={"executor": cfg.executor.model_copy(update=update)})


def _research(directory: Path, cfg: Config, proposer: str, limits: Limits, tag: str | None) -> Research:
    """Runs the loop with the live view; a UserError or an interrupt ends the command cleanly."""
    interrupt.install()
    try:
        view = LiveView(out, cfg.metric.goal, limits.max_experiments, limits.time_budget_s)
        research = Research(directory, cfg, make_proposer(cfg, proposer), tag=tag, listener=view)
        for exp in research.ledger.experiments():
            view.rows[exp.id] = (exp, "done" if exp.state == "done" else "pending")
        with view:
            research.run(limits)
        interrupt.check()  # a stop asked for in the last instants, or whose first raise Python swallowed
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("rsi: stopped; nothing recorded is lost. Run `rsi run` again to resume.")
        raise typer.Exit(130) from None
    except RuntimeError as e:  # git failed under rsi: say so in one line; `rsi doctor` checks the rest
        err.print(
            f"rsi: {e}. Nothing recorded is lost; `rsi doctor` checks the research, `rsi run` resumes it.",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1) from None
    except (OSError, sqlite3.OperationalError) as e:
        if not _disk_full(e):
            raise
        fail(f"the disk is full ({e}); stopped with nothing recorded lost: free space, then `rsi run` resumes")
    return research


def _disk_full(e: BaseException) -> bool:
    """ENOSPC from a write of ours, or SQLite's own words for it."""
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "disk is full" in str(e)


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(min=0.1, help="how long to research")] = 10.0,
    directory: Annotated[Path | None, typer.Option("--dir", help="where to create the demo repository")] = None,
    example: Annotated[str, typer.Option(help="tinygpt, tabular or sgd")] = "tinygpt",
    budget: Annotated[str | None, typer.Option(help="training time per candidate (tinygpt only; 15s)")] = None,
) -> None:
    """Research a shipped example (a tiny GPT by default) offline, in a fresh git repository."""
    try:
        check_demo(example)
        if budget is not None and example != "tinygpt":
            raise UserError(f"--budget sets tinygpt's training time: the {example} example has none to set")
        budget = budget or DEMO_BUDGET
        parse_duration(budget)
        root = create_demo(example, directory or demo_dir(example), budget)
        cfg = load_config(root)
    except (UserError, ValueError) as e:
        fail(str(e) if isinstance(e, UserError) else f"--budget: {e}")
    out.print(f"rsi demo: {example} in {root}, researching for {minutes:g} minutes", highlight=False)
    research = _research(root, cfg, "knobs", Limits(time_budget_s=minutes * 60), None)
    data = status_json(research.ledger)
    base, best = data["baseline"], data["best"]
    name = data["metric"]
    out.print(f"\n{'':10}{name:>12}{'held-out':>12}", highlight=False)
    for label, row in (("baseline", base), ("best", best)):
        out.print(f"{label:10}{_num(row['metric']):>12}{_num(row['holdout']):>12}", highlight=False)
    out.print(f"kept changes: git -C {root} log rsi/{data['tag']}", highlight=False)
    report = write_report(root)
    out.print(f"report: {report}", highlight=False)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command()
def status(
    directory: DirArg = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="print the contract's JSON object")] = False,
) -> None:
    """Experiments so far."""
    try:
        ledger = Ledger(Workspace(directory).state / "ledger.sqlite", readonly=True)
    except UserError as e:
        fail(str(e))
    data = status_json(ledger)
    if as_json:
        print(json.dumps(data, indent=1))
        return
    table = Table(title=f"{data['task']}: {data['metric']} ({data['goal']})", show_edge=False)
    for col in ("#", "proposer", "hypothesis", "metric", "runs", "status", "verdict"):
        table.add_column(col, justify="right" if col in ("#", "metric", "runs") else "left")
    for x in data["experiments"]:
        metric = "-" if x["metric"] is None else f"{x['metric']:.5g}"
        table.add_row(
            str(x["id"]),
            x["proposer"],
            x["hypothesis"],
            metric,
            str(len(x["runs"])),
            "-" if x["verdict"] == "pending" and not x["runs"] else x["status"],  # (the JSON's "ok": no run failed)
            x["verdict"] + (" (reverted)" if x["revert_commit"] else ""),
        )
    out.print(table)
    out.print(standing(data), highlight=False)
    for who, b in data["proposers"].items():
        out.print(
            f"proposer {who}: {int(b['proposals'] or 0)} proposals, {int(b['keeps'] or 0)} kept, "
            f"share {b['share'] or 0:.0%}, ${b['cost_usd'] or 0:.4f}",
            highlight=False,
        )
    for model, m in data["models"].items():
        tokens = int(m["tokens_in"] + m["tokens_out"])
        failed = f", {int(m['failed'])} failed" if m["failed"] else ""
        if m["unanswered"]:  # cost unknown
            failed += f", {int(m['unanswered'])} with no answer (in flight, or left when the research stopped)"
        out.print(
            f"model {model}: {int(m['calls'])} calls, {tokens} tokens, ${m['cost_usd']:.4f}{failed}", highlight=False
        )
    if waiting := data["retests_waiting"]:
        queued = ", ".join(f"#{r['id']} (up to {r['repeats']} runs)" for r in waiting)
        out.print(f"retests waiting: {queued}: the research takes them before its next proposal", highlight=False)
    for c in data["pareto"]:
        points = {p["id"]: p for p in c["points"]}
        front = ", ".join(f"#{i} {points[i]['metric']:.5g} / {points[i]['value']:.4g}" for i in c["front"])
        out.print(f"Pareto front, {data['metric']} / {c['name']}: {front or 'nothing measured'}", highlight=False)


@app.command()
def verify(
    commit: Annotated[
        str | None,
        typer.Argument(help="an experiment (12 or #12) or a commit of this research (default: the champion)"),
    ] = None,
    directory: Annotated[Path, typer.Option("--dir", help="the task's repository")] = Path("."),
    runs: Annotated[int, typer.Option(min=1, help="fresh runs")] = 5,
) -> None:
    """Re-run a commit with fresh seeds; exit 1 if its recorded metric is not reproduced (or cannot be judged)."""
    try:
        cfg = load_config(directory)
        research = Research(directory, cfg, make_proposer(cfg, "knobs"))
        exp, fresh, sentence, ok = research.verify(commit, runs)
    except UserError as e:
        fail(str(e))
    shown = ", ".join("failed" if m is None else f"{m:.6g}" for m in fresh)
    out.print(f"experiment {exp.id} ({exp.hypothesis}): fresh runs {shown}", highlight=False)
    judged = (
        sentence if sentence.startswith("cannot judge") else f"{'reproduced' if ok else 'NOT reproduced'}: {sentence}"
    )
    out.print(judged, highlight=False)
    if not ok:
        raise typer.Exit(1)


@app.command()
def ablate(
    directory: DirArg = Path("."),
    repeats: Annotated[int, typer.Option(min=2, max=100, help="fresh runs of the champion and of each variant")] = 5,
    simplify: Annotated[
        bool, typer.Option("--simplify", help="then measure the champion without what does not matter")
    ] = False,
    tag: Annotated[str | None, typer.Option(help="the research's tag (default: the task's research)")] = None,
) -> None:
    """What each kept change contributes: each reverted alone from the final champion, on fresh seeds."""
    from rsi.ablation import ablate as measure_changes

    interrupt.install()
    try:
        cfg = load_config(directory)
        path = Workspace(directory).state / "ledger.sqlite"
        if not path.is_file():
            raise UserError(f"no research in {directory} yet: `rsi run` first")
        research = Ledger(path, readonly=True)
        known = research.get("tag")
        if tag is not None and tag != known:
            raise UserError(f"this task's research is rsi/{known}, not rsi/{tag}")
        rows = measure_changes(directory, cfg, research, repeats, simplify, lambda m: err.print(m, highlight=False))
        interrupt.check()
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("rsi: stopped; the runs so far are recorded. Run `rsi ablate` again to resume.")
        raise typer.Exit(130) from None
    except RuntimeError as e:  # git failed under rsi
        err.print(f"rsi: {e}. The runs so far are recorded; `rsi ablate` resumes.", markup=False, highlight=False)
        raise typer.Exit(1) from None
    table = Table(title=f"ablation: {cfg.metric.name} ({cfg.metric.goal}), {repeats} runs each", show_edge=False)
    for col in ("kept", "change", "gain when kept", "contribution now", "verdict"):
        table.add_column(col, justify="left" if col in ("change", "verdict") else "right")
    for r in rows:
        gained = "-" if r.gain_when_kept is None else f"{r.gain_when_kept:+.4g}"
        now = "-" if r.contribution is None else f"{r.contribution:+.4g}"
        if r.contribution is not None and r.half_width is not None:
            now += f" +- {r.half_width:.2g}"
        table.add_row(f"#{r.exp_id}" if r.exp_id else "", r.hypothesis, gained, now, r.label)
    out.print(table)


@app.command()
def report(
    directory: DirArg = Path("."),
    out_file: Annotated[Path | None, typer.Option("--out", help="the HTML file (default .rsi/report.html)")] = None,
) -> None:
    """Write an HTML report (plots, table, kept diffs) and progress.png next to it."""
    try:
        path = write_report(directory, out_file)
    except UserError as e:
        fail(str(e))
    except OSError as e:  # a place it cannot write (a read-only or virtual file system)
        fail(f"cannot write the report: {e.strerror or e} ({e.filename or out_file})")
    out.print(f"wrote {path} and {path.parent / 'progress.png'}", highlight=False)


@app.command()
def doctor(directory: DirArg = Path(".")) -> None:
    """Check the ledger, the branch, the worktrees and the processes; repair what is safe. Exit 1 if a problem
    remains."""
    try:
        findings = Doctor(directory).examine()
    except UserError as e:
        fail(str(e))
    marks = {"ok": "ok     ", "fixed": "fixed  ", "problem": "PROBLEM"}
    for f in findings:
        out.print(f"{marks[f.level]} {f.what}", highlight=False, markup=False)
    if any(f.level == "problem" for f in findings):
        raise typer.Exit(1)


@app.command()
def serve(
    directory: DirArg = Path("."),
    port: Annotated[int, typer.Option(help="the port", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="the address to bind; anything but loopback needs a token")] = "127.0.0.1",
    token: Annotated[
        str | None, typer.Option(help="required of every request; made up and printed when off loopback")
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM), with --key")] = None,
    key: Annotated[Path | None, typer.Option(help="the certificate's private key (PEM)")] = None,
) -> None:
    """A live dashboard of the research in a browser (pip install 'rsi[serve]'). Reads the ledger only."""
    from rsi.dashboard import serve as run_server

    try:
        run_server(directory, host, port, token, cert, key)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def export(
    directory: DirArg = Path("."),
    fmt: Annotated[
        str | None, typer.Option("--format", help="tsv (autoresearch's results.tsv, the default), csv or json")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="the file (default: standard output)")] = None,
    mlflow: Annotated[
        str | None, typer.Option("--mlflow", help="log every experiment to this MLflow tracking URI instead")
    ] = None,
) -> None:
    """Write the experiments as a table, or log them to MLflow (pip install 'rsi[mlflow]')."""
    from rsi.export import FORMATS, export_mlflow, export_text

    try:
        if mlflow is not None:
            if fmt is not None or out_file is not None:
                raise UserError("--mlflow logs to MLflow: it takes no --format or --out (export a file separately)")
            name, added, skipped = export_mlflow(directory, mlflow)
            already = f" ({skipped} were there already)" if skipped else ""
            out.print(f"logged {added} experiment(s) to MLflow experiment {name!r} at {mlflow}{already}")
            return
        fmt = fmt or "tsv"
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt!r}: choose tsv, csv or json")
        text = export_text(directory, fmt)
        if out_file is None:
            sys.stdout.write(text)
            return
        try:
            out_file.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {out_file}: {e.strerror}") from None
        out.print(f"wrote {out_file}", highlight=False)
    except UserError as e:
        fail(str(e))


meta_app = typer.Typer(
    rich_markup_mode=None, help="rsi researches its own research program, and checks it on tasks it never saw."
)
app.add_typer(meta_app, name="meta")
MetaDir = Annotated[Path, typer.Option("--dir", help="the meta-task's folder (made on first use)")]


def _steer(directory: Path) -> Ledger:
    """The research's ledger, writable, for a note or a flag the running `rsi run` reads."""
    try:
        path = Workspace(directory).state / "ledger.sqlite"
        Ledger(path, readonly=True).close()  # says clearly when there is no research here
        return Ledger(path)
    except UserError as e:
        fail(str(e))


@app.command()
def pause(directory: DirArg = Path(".")) -> None:
    """Hold the research: a running `rsi run` starts no new experiment (those in flight finish)."""
    ledger = _steer(directory)
    ledger.set("paused", "1")
    out.print("paused: `rsi resume` continues; a new `rsi run` also waits for it", highlight=False)


@app.command()
def resume(directory: DirArg = Path(".")) -> None:
    """Let a paused research go on."""
    ledger = _steer(directory)
    if ledger.get("paused") != "1":
        out.print("not paused: nothing to resume", highlight=False)
        return
    ledger.set("paused", "0")
    out.print("resumed", highlight=False)


@app.command()
def idea(
    text: Annotated[str, typer.Argument(help="a note for the LLM proposers, e.g. 'try a cosine schedule'")],
    directory: DirArg = Path("."),
) -> None:
    """Leave an idea: LLM proposers see it in their prompt from their next proposal on; the ledger keeps it."""
    if not text.strip():
        fail("the idea is empty")
    ledger = _steer(directory)
    count = ledger.add_idea(text.strip())
    out.print(f"idea {count} recorded; LLM proposers see it from their next proposal", highlight=False)
    if not ledger.calls_by_model():
        out.print(
            "no LLM has proposed in this research yet: the knobs proposer does not read ideas; "
            "`rsi run --proposer llm` (or swarm) does",
            highlight=False,
        )


@app.command()
def fork(
    start: Annotated[str, typer.Option("--from", help="an experiment number (12 or #12) or any commit")],
    tag: Annotated[str, typer.Option(help="the new line's tag: its branch is rsi/<tag>")],
    directory: DirArg = Path("."),
    dest: Annotated[Path | None, typer.Option("--dir", help="where the line lives (default .rsi/forks/<tag>)")] = None,
) -> None:
    """Start a new research line from any commit, beside the research that runs here (in a clone of its own)."""
    from rsi.fork import fork as make_fork

    try:
        where, commit = make_fork(directory, start, tag, dest)
    except UserError as e:
        fail(str(e))
    except RuntimeError as e:  # git could not clone or check out
        fail(f"the fork could not be made: {e}")
    out.print(f"fork rsi/{tag} starts at {commit[:10]} in {where}", highlight=False)
    out.print(f"research it with: rsi run {where}", highlight=False)
    out.print(f"bring its result here with: git fetch {where} rsi/{tag}:rsi/{tag}", highlight=False)


@app.command()
def retest(
    experiment: Annotated[str, typer.Argument(help="the experiment (12 or #12) whose change to measure again")],
    directory: DirArg = Path("."),
    repeats: Annotated[int, typer.Option(min=1, max=100, help="screening runs it may get")] = 16,
) -> None:
    """Measure an experiment's change again, on the current champion: next in line for a running `rsi run`
    (or the next one started), judged with up to --repeats screening runs."""
    digits = experiment.strip().removeprefix("#")
    if not re.fullmatch(r"[0-9]+", digits):  # (ASCII digits: int() reads others too)
        fail(f"{experiment!r} is not an experiment number (12 or #12)")
    ledger = _steer(directory)
    exp = ledger.experiment(int(digits)) if len(digits) <= 18 else None
    if exp is None:
        fail(f"there is no experiment #{digits} in this research")
    if exp.id == 0 or exp.verdict == "keep":
        fail(f"#{exp.id} is in the champion already: `rsi verify` re-measures it, `rsi ablate` what it adds now")
    if exp.commit_sha is None:
        fail(f"#{exp.id} was rejected before it ran ({exp.reason}): it has no change to measure")
    with ledger.transaction():
        queue = [*(ledger.get_json("retests") or []), {"id": exp.id, "repeats": repeats}]
        ledger.set("retests", json.dumps(queue))
    out.print(
        f"retest of #{exp.id} queued ({len(queue)} waiting): a running `rsi run` takes it before its next proposal,"
        " else the next `rsi run` does",
        highlight=False,
    )


@meta_app.callback(invoke_without_command=True)
def meta(
    ctx: typer.Context,
    directory: MetaDir = Path("rsi-meta"),
    program: Annotated[Path | None, typer.Option(help="the program to start from (default: the one rsi ships)")] = None,
    meta_program: Annotated[
        Path | None, typer.Option(help="the meta level's own settings, a program too (default: the one rsi ships)")
    ] = None,
    level: Annotated[int, typer.Option(min=1, max=2, help="1: improve a program; 2: improve the meta program")] = 1,
    max_experiments: Annotated[int | None, typer.Option(min=1, help="meta experiments, baseline included")] = 30,
    time_budget: Annotated[
        str | None, typer.Option(help="end within one evaluation of this long; an unfinished one resumes")
    ] = None,
    tasks: Annotated[int | None, typer.Option(min=1, help="synthetic tasks per evaluation (default 6)")] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="inner researches per task and evaluation (default 2)")
    ] = None,
    budget: Annotated[int | None, typer.Option(min=5, help="runs each inner research may make (default 60)")] = None,
    utility: Annotated[
        str | None,
        typer.Option(
            help="area (default): the gap inner research closed, averaged over its budget's runs (the area under "
            "its improvement curve); final: the gap closed at the end of the budget. Fixed when the meta-task is made"
        ),
    ] = None,
    holdout: Annotated[
        str | None,
        typer.Option(
            help="heldout (default): held-out synthetic families; examples: the real examples (tabular, tinygpt) "
            "at small budgets, minutes per evaluation. Fixed when the meta-task is made"
        ),
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(
            help="mixed (default): half the synthetic tasks start at the middle of a range derived around the "
            "file's value, as rsi's default ranges do; hinted: all start off to one side of a hand-set range "
            "around the optimum (the only placement before 2026-11-27). Fixed when the meta-task is made"
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="meta experiments at once")] = None,
    proposer: Annotated[
        str, typer.Option(help="knobs, or llm / swarm with [[proposer.models]] in the meta-task's rsi.toml")
    ] = "knobs",
) -> None:
    """Research the research program: inner research on synthetic tasks scores each candidate program."""
    if ctx.invoked_subcommand is not None:
        return
    from rsi.meta import HOLDOUTS, UTILITIES, Scale, create
    from rsi.meta import settings as meta_settings
    from rsi.program import default_text
    from rsi.suite import PLACEMENTS

    try:
        if utility is not None and utility not in UTILITIES:
            raise UserError(f"--utility {utility}: choose one of {', '.join(UTILITIES)}")
        if holdout is not None and holdout not in HOLDOUTS:
            raise UserError(f"--holdout {holdout}: choose one of {', '.join(HOLDOUTS)}")
        if placement is not None and placement not in PLACEMENTS:
            raise UserError(f"--placement {placement}: choose one of {', '.join(PLACEMENTS)}")
        budget_s = parse_duration(time_budget) if time_budget is not None else None
        asked: dict[str, Any] = {"tasks": tasks, "seeds": seeds, "budget": budget, "utility": utility}
        asked["holdout"], asked["placement"] = holdout, placement
        if not (directory / "rsi.toml").exists():
            subject = (level == 1 and program) or (level == 2 and meta_program)
            text = subject.read_text(encoding="utf-8") if subject else default_text()
            scale = dataclasses.replace(Scale(), **{k: v for k, v in asked.items() if v is not None})
            create(directory, level, text, scale)
            out.print(f"made the meta-task {directory} (level {level}); researching it", highlight=False)
        else:  # its evaluation is its metric: fixed when it was made
            made = dataclasses.asdict(meta_settings(directory)[1])
            if changed := [f"--{k} {v} (it has {made[k]})" for k, v in asked.items() if v not in (None, made[k])]:
                raise UserError(
                    f"{directory} was made with other settings: {', '.join(changed)}; a research's metric cannot "
                    "change midway: leave them out to resume it, or give --dir a new folder"
                )
        settings = load_program(meta_program) if meta_program and level == 1 else default_program()
        cfg = _with_executor(apply_program(load_config(directory), settings), workers, None, None, None)
    except (UserError, ValueError, OSError) as e:
        fail(str(e) if isinstance(e, UserError) else f"{e}")
    research = _research(directory, cfg, proposer, Limits(max_experiments, budget_s), None)
    s = research.summary()
    out.print(
        f"meta-utility: default {s['baseline']:.4g} -> best {s['best']:.4g} (experiment {s['best_id']}); "
        f"`rsi meta report --dir {directory}` compares them on held-out tasks",
        highlight=False,
    )


@meta_app.command("report")
def meta_report(
    directory: MetaDir = Path("rsi-meta"),
    seeds: Annotated[int, typer.Option(min=2, help="fresh seeds for each program")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """The starting program against the improved one on held-out tasks: meta-utility, intervals, p, diff."""
    from rsi.meta import report as meta_figures

    try:
        found = meta_figures(directory, seeds)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table(title=f"held-out meta-utility ({len(found['seeds'])} seeds, {found['scale']})")
    for col in ("program", "mean", "95% interval"):
        table.add_column(col)
    for name in ("default", "improved"):
        lo, hi = found[name]["ci95"]
        table.add_row(name, f"{found[name]['mean']:.4f}", f"[{lo:.4f}, {hi:.4f}]")
    out.print(table)
    ratio = "n/a" if found["ratio"] is None else f"{found['ratio']:.3f}x"
    kind = found["scale"]["utility"]
    out.print(
        f"measured as {kind} (researched): ratio {ratio}, paired t-test p = {found['p_value']:.3g}", highlight=False
    )
    for measure, other in found["by_utility"].items():
        if measure != kind:
            ratio = "n/a" if other["ratio"] is None else f"{other['ratio']:.3f}x"
            out.print(
                f"measured as {measure}: default {other['default']['mean']:.4f}, "
                f"improved {other['improved']['mean']:.4f}, ratio {ratio}, p = {other['p_value']:.3g}",
                highlight=False,
            )
    out.print(found["diff"] or "(the champion is the starting program)", highlight=False, markup=False)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # errors of usage reach the handler below, not Typer's printer
    except typer.TyperException as e:  # bad usage: an unknown option, a value out of its range
        context = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # `rsi` alone: its message is the help
            print(e.format_message(), file=sys.stderr)
            sys.exit(2)
        where = context.command_path if context is not None else "rsi"
        hint = f"; see '{where} --help'" if context is not None else ""
        print(f"{where}: {e.format_message().rstrip('.')}{hint}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        print("rsi: stopped", file=sys.stderr)
        sys.exit(130)
    except UserError as e:  # a UserError raised outside a command's own handling
        print(f"rsi: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # git failed under rsi (a repository changed behind its back)
        if not str(e).startswith(("git ", "cannot read ")):  # (a bug's RuntimeError keeps its traceback)
            raise
        print(f"rsi: {e}; `rsi doctor` checks the research", file=sys.stderr)
        sys.exit(1)
    except sqlite3.DatabaseError as e:  # a ledger damaged on disk (a full disk, a copy cut short)
        if isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            raise
        print(f"rsi: the research's ledger cannot be read ({e}); `rsi doctor` says what is wrong", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before a command had set up its own handling
        print("rsi: stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # a command's typer.Exit comes back as its code

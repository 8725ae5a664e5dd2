"""`rsi export`: the ledger as a table for other tools.

`tsv` is autoresearch's `results.tsv` (commit, the metric under its own name, memory_gb, keep/discard/crash,
description), so its notebooks and plots read an rsi research unchanged; `csv` and `json` are every field of
`rsi status --json`'s experiments; `mlflow` logs each experiment as an MLflow run (an optional extra).
"""

from __future__ import annotations

import csv
import io
import json
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Literal

from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.status import status_json

Format = Literal["tsv", "csv", "json"]
FORMATS: tuple[Format, ...] = ("tsv", "csv", "json")


def _tsv_status(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return "crash"
    if row["verdict"] in ("baseline", "keep"):
        return "keep" if row["metric"] is not None else "crash"  # a baseline that gave no metric is no keep
    return "discard"  # a pruned candidate too: stopped for being behind, with no metric


def _one_line(text: str) -> str:
    return " ".join(text.split())


def results_tsv(status: dict[str, Any]) -> str:
    """autoresearch's shape: experiments that ran a commit, in order; a crash has metric and memory 0."""
    metric = status["metric"] or "metric"
    lines = ["\t".join(("commit", metric, "memory_gb", "status", "description"))]
    for row in status["experiments"]:
        if not row["commit"] or row["verdict"] == "pending":
            continue
        state = _tsv_status(row)
        value = row["metric"] if state != "crash" and row["metric"] is not None else 0.0
        memory = (row["peak_memory_mb"] or 0.0) / 1000 if state != "crash" else 0.0  # MB and GB are powers of ten
        lines.append(f"{row['commit'][:7]}\t{value:.6f}\t{memory:.1f}\t{state}\t{_one_line(row['hypothesis'])}")
    return "\n".join(lines) + "\n"


def results_csv(status: dict[str, Any]) -> str:
    rows = status["experiments"]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:  # lists (runs, seeds, interval) as JSON in their cell
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return buf.getvalue()


def export_text(root: Path, fmt: Format) -> str:
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    try:
        status = status_json(ledger)
    finally:
        ledger.close()
    if fmt == "tsv":
        return results_tsv(status)
    if fmt == "csv":
        return results_csv(status)
    return json.dumps(status["experiments"], indent=2) + "\n"


def export_mlflow(root: Path, uri: str) -> tuple[str, int, int]:
    """Each experiment not yet there becomes a finished MLflow run in the MLflow experiment `rsi/<task>/<tag>`:
    its knob values and proposer as parameters, its metric (mean and each run, as steps), held-out figure and
    verdict, and its diff as `diff.patch`. Runs already exported (tag `rsi.experiment`) are skipped, so an
    export can be repeated as the research goes on. Returns the MLflow experiment, runs added, runs skipped."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--mlflow needs MLflow: pip install 'rsi[mlflow]'") from None
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    try:
        status = status_json(ledger)
        experiments = {e.id: e for e in ledger.experiments()}
    finally:
        ledger.close()
    name = f"rsi/{status['task'] or root.name}/{status['tag']}"
    metric = status["metric"] or "metric"
    _reachable(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            exp_id = client.create_experiment(name, artifact_location=_artifacts_beside(uri))
        else:
            exp_id = found.experiment_id
        done = {
            r.data.tags.get("rsi.experiment")
            for r in client.search_runs([exp_id], max_results=50000)
            if "rsi.experiment" in r.data.tags
        }
        added = 0
        for row in status["experiments"]:
            if str(row["id"]) in done or row["verdict"] == "pending":
                continue
            e = experiments[row["id"]]
            tags = {
                "rsi.experiment": str(e.id),
                "rsi.verdict": row["verdict"],
                "rsi.status": row["status"],
                "rsi.commit": row["commit"] or "",
                "rsi.parent": "" if e.parent is None else str(e.parent),
                "mlflow.note.content": f"{e.hypothesis}\n\n{e.reason}".strip(),
            }
            run = client.create_run(exp_id, run_name=f"#{e.id} {_one_line(e.hypothesis)[:80]}", tags=tags)
            params = {"proposer": e.proposer, **{k: json.dumps(v) for k, v in sorted(e.params.items())}}
            figures: list[tuple[str, float, int]] = []
            if row["metric"] is not None:
                figures.append((metric, float(row["metric"]), 0))
            figures += [(f"{metric}_run", float(v), i) for i, v in enumerate(row["runs"]) if v is not None]
            if row["holdout"] is not None and row["verdict"] in ("baseline", "keep"):
                figures.append((f"{metric}_holdout", float(row["holdout"]), 0))
            for key in ("peak_memory_mb", "duration_s"):
                if row[key] is not None:
                    figures.append((key, float(row[key]), 0))
            stamp = int((e.finished or e.created) * 1000)
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, stamp, step) for k, v, step in figures],
                params=[Param(k, v[:6000]) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            if e.diff:
                client.log_text(run.info.run_id, e.diff, "diff.patch")
            client.set_terminated(run.info.run_id, "FAILED" if row["status"] != "ok" else "FINISHED")
            added += 1
    except MlflowException as err:
        raise UserError(f"MLflow at {uri}: {str(err).splitlines()[0]}") from None
    return name, added, len(done)


def _reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is said at once (MLflow's client retries for minutes first)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UserError(f"--mlflow {uri}: the port is not a port number") from None
    if not parts.hostname:
        raise UserError(f"--mlflow {uri}: no host in the address")
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return  # reached through a proxy, as MLflow's client reaches it: nothing to probe directly
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise UserError(f"cannot reach the MLflow server at {uri}: {why}") from None


def _artifacts_beside(uri: str) -> str | None:
    """A local sqlite store keeps its artifacts in `mlartifacts/` beside the database file (MLflow's default
    is the current folder); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None

"""The ledger: SQLite in WAL mode, the single source of truth of a research.

Every state change is one transaction, so the orchestrator can be killed at any instant and resumed: an
experiment is `proposed` (its commit exists), then `running`, then `done` with its verdict. Runs are rows of
their own; a run still `running` when the orchestrator died is deleted on resume and run again.
"""

from __future__ import annotations

import bisect
import copy
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsi.errors import UserError

# a model call's error until its answer is recorded; it stays when the research stopped waiting (its time budget
# ran out while the model thought) and the process ended: what that call cost is unknown
UNANSWERED_CALL = "no answer recorded: in flight, or the research stopped before the model replied"
SCHEMA_VERSION = 7  # 3: calls (what each model call cost); 4: runs.progress; 5: experiments.revert_commit;
# 6: runs.cpu_s and runs.busy; 7: experiments.moved
SELECT_KINDS = ("screen", "confirm", "fresh")  # runs of the task's command; "holdout" and "verify" are apart

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    parent INTEGER,
    parent_commit TEXT,
    commit_sha TEXT,
    kept_commit TEXT,
    proposer TEXT NOT NULL,
    hypothesis TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    diff TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    status TEXT,
    verdict TEXT,
    reason TEXT NOT NULL DEFAULT '',
    interrupts INTEGER NOT NULL DEFAULT 0,
    reverted INTEGER NOT NULL DEFAULT 0,
    ci_low REAL,
    ci_high REAL,
    revert_commit TEXT,
    created REAL NOT NULL,
    finished REAL,
    moved INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment INTEGER NOT NULL REFERENCES experiments(id),
    kind TEXT NOT NULL,
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,
    status TEXT,
    metric REAL,
    reason TEXT NOT NULL DEFAULT '',
    returncode INTEGER,
    duration_s REAL,
    peak_memory_mb REAL,
    pid INTEGER,
    pid_started REAL,
    stdout_tail TEXT NOT NULL DEFAULT '',
    stderr_tail TEXT NOT NULL DEFAULT '',
    env TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '[]',
    cpu_s REAL,
    busy REAL,
    started REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment INTEGER,
    proposer TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    duration_s REAL NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
"""


@dataclass
class Run:
    id: int
    experiment: int
    kind: str  # "screen", "confirm" or "fresh" (the task's command), "holdout", "verify"
    seed: int
    state: str
    status: str | None
    metric: float | None
    reason: str
    duration_s: float | None
    peak_memory_mb: float | None
    stdout_tail: str
    stderr_tail: str
    busy: float | None = None  # the share of its cores' time other processes used while it ran (runner.run)


@dataclass
class Experiment:
    id: int
    parent: int | None
    parent_commit: str | None
    commit_sha: str | None
    kept_commit: str | None
    proposer: str
    hypothesis: str
    params: dict[str, Any]
    diff: str
    state: str  # proposed | running | done
    status: str | None
    verdict: str | None
    reason: str
    interrupts: int  # runs of it cut short by the orchestrator's death, in a row
    reverted: bool  # a keep that did not hold on fresh seeds: replication refused it, or it was reverted
    ci: tuple[float, float] | None  # bounds on its improvement over the champion when decided
    created: float
    finished: float | None
    revert_commit: str | None = None  # it landed, then did not hold: the commit that undid it on the branch
    runs: list[Run] = field(default_factory=list)

    def metrics(self, kind: str = "select") -> list[float | None]:
        """Metrics of its runs of one kind (None for a failed run); "select" is every run of the task's
        command (screening, confirmation and fresh), as opposed to "holdout" runs."""
        kinds = SELECT_KINDS if kind == "select" else (kind,)
        return [r.metric if r.status == "ok" else None for r in self.runs if r.kind in kinds]

    def valid(self, kind: str = "select") -> list[float]:
        return [m for m in self.metrics(kind) if m is not None]

    def mean(self, kind: str = "select") -> float | None:
        v = self.valid(kind)
        return sum(v) / len(v) if v else None


# the columns of Experiment and Run, in the order of their fields
_EXPERIMENT_COLUMNS = (
    "id, parent, parent_commit, commit_sha, kept_commit, proposer, hypothesis, params, diff, state, status, verdict,"
    " reason, interrupts, reverted, ci_low, ci_high, created, finished, revert_commit"
)
_RUN_COLUMNS = (
    "id, experiment, kind, seed, state, status, metric, reason, duration_s, peak_memory_mb, stdout_tail, stderr_tail,"
    " busy"
)


class _Cache:
    def __init__(self) -> None:
        self.version = -1  # SQLite's data_version when it was filled
        self.by_id: dict[int, Experiment] = {}
        self.metrics: dict[int, list[float]] | None = None  # select_metrics()
        self.reverted: set[int] = set()  # ... and the experiments it leaves out
        self.seeded: dict[str, dict[int, dict[int, float]]] | None = None  # replication_pairs()

    def clear(self) -> None:
        self.by_id, self.metrics, self.seeded = {}, None, None


def _seeded(seeded: dict[str, dict[int, dict[int, float]]], kind: str, exp_id: int, seed: int, metric: float) -> None:
    """A run into replication_pairs()'s maps: confirmation runs by experiment then seed, fresh runs by seed
    then experiment; the first run of each."""
    outer, inner = (exp_id, seed) if kind == "confirm" else (seed, exp_id)
    seeded[kind].setdefault(outer, {}).setdefault(inner, metric)


def _create(path: Path) -> None:
    """Write an empty ledger beside `path` and rename it into place, so that a reader (`rsi status`) never
    sees a half-made file: the ledger either does not exist yet or has its whole schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(path.name + ".new")
    draft.unlink(missing_ok=True)
    db = sqlite3.connect(draft, isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    finally:
        db.close()
    draft.replace(path)


class Ledger:
    """One research's record; opened by the orchestrator read-write and by `status` read-only.

    Each thread that uses a ledger gets its own connection to the file (WAL lets readers and one writer work
    side by side): the workers of a parallel research record their runs as they happen. An in-memory ledger
    has a single connection and serves one thread at a time."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._memory = str(path) == ":memory:"
        self._memory_cache: _Cache | None = None  # see _cache; on disk, each thread's connection has its own
        if readonly:
            if not path.exists():
                raise UserError(f"no research here yet: {path} does not exist (start one with `rsi run`)")
            if self._version() < SCHEMA_VERSION:  # an older rsi wrote it: upgrade it once, then read
                self.close()
                Ledger(path).close()
        else:
            if not self._memory and not path.exists():
                _create(path)
            try:
                self.db.executescript(_SCHEMA)
            except sqlite3.DatabaseError:
                raise UserError(f"{path} is not an rsi ledger (or is damaged)") from None
            self._migrate()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "db", None)
        if conn is None:
            conn = self._shared if self._memory and hasattr(self, "_shared") else self._connect()
            self._local.db = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=not self._memory)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError:
                conn.close()
                raise UserError(f"{self.path} is not an rsi ledger (or is damaged)") from None
        conn.row_factory = sqlite3.Row
        if self._memory:
            self._shared = conn
        return conn

    def _version(self) -> int:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError:
            raise UserError(f"{self.path} is not an rsi ledger (or is damaged)") from None
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Bring a ledger written by an older rsi up to this schema, in one transaction."""
        version = self._version()
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.path} was written by a newer rsi (schema {version}); upgrade rsi")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(experiments)")}
        with self.transaction():
            if "attempts" in columns:
                self.db.execute("ALTER TABLE experiments RENAME COLUMN attempts TO interrupts")
            added = (("reverted", "INTEGER NOT NULL DEFAULT 0"), ("ci_low", "REAL"), ("ci_high", "REAL"))
            for column, kind in (*added, ("revert_commit", "TEXT"), ("moved", "INTEGER")):
                if column not in columns:
                    self.db.execute(f"ALTER TABLE experiments ADD COLUMN {column} {kind}")
            if "moved" not in columns:  # an older rsi reverted only the last keep: ids give the order of moves
                self.db.execute(
                    "UPDATE experiments SET moved = id WHERE kept_commit IS NOT NULL OR revert_commit IS NOT NULL"
                )
            run_columns = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            for column, kind in (("progress", "TEXT NOT NULL DEFAULT '[]'"), ("cpu_s", "REAL"), ("busy", "REAL")):
                if column not in run_columns:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            if version < 2:  # version 1 had one kind of run of the task's command
                self.db.execute("UPDATE runs SET kind = 'fresh' WHERE kind = 'select' AND experiment = 0")
                self.db.execute("UPDATE runs SET kind = 'screen' WHERE kind = 'select'")
            self.set("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        """Closes this thread's connection (a worker's closes when its thread ends)."""
        conn = getattr(self._local, "db", None)
        if conn is not None:
            conn.close()
            self._local.db = None
            self._local.cache = None

    def _cache(self) -> _Cache:
        """The experiments this connection has read, kept while no other connection has committed (SQLite's
        data_version says so) and forgotten one by one as this ledger's own writes touch them."""
        cache = self._held()
        if cache is None:
            cache = _Cache()
            if self._memory:
                self._memory_cache = cache
            else:
                self._local.cache = cache
        # an in-memory ledger has no other connection: nothing but its own writes, followed one by one, changes it
        version = 0 if self._memory else int(self.db.execute("PRAGMA data_version").fetchone()[0])
        if version != cache.version:
            cache.version = version
            cache.clear()
        return cache

    def _held(self) -> _Cache | None:
        if self._memory:  # an in-memory ledger's one connection serves every thread
            return self._memory_cache
        cache: _Cache | None = getattr(self._local, "cache", None)
        return cache

    def _forget(self, *exp_ids: int) -> None:
        cache = self._held()
        if cache is not None:
            for exp_id in exp_ids:
                cache.by_id.pop(exp_id, None)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            self._cache().clear()  # what was read inside it may never have been committed
            raise
        self.db.execute("COMMIT")

    # meta: small facts about the research (tag, start commit, frozen hashes, seed)
    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    # experiments
    def next_id(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM experiments").fetchone()
        return int(row[0])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0])

    def add_experiment(
        self,
        *,
        exp_id: int,
        parent: int | None,
        parent_commit: str | None,
        commit_sha: str | None,
        proposer: str,
        hypothesis: str,
        params: dict[str, Any],
        diff: str,
        state: str = "proposed",
        status: str | None = None,
        verdict: str | None = None,
        reason: str = "",
    ) -> None:
        self._forget(exp_id)
        self.db.execute(
            "INSERT INTO experiments (id, parent, parent_commit, commit_sha, proposer, hypothesis, params, diff,"
            " state, status, verdict, reason, created, finished)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                exp_id,
                parent,
                parent_commit,
                commit_sha,
                proposer,
                hypothesis,
                json.dumps(params),
                diff,
                state,
                status,
                verdict,
                reason,
                time.time(),
                time.time() if state == "done" else None,
            ),
        )

    def update_experiment(self, exp_id: int, **fields: Any) -> None:
        if "state" in fields and fields["state"] == "done":
            fields.setdefault("finished", time.time())
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._forget(exp_id)
        if "revert_commit" in fields and (cache := self._held()) is not None:
            cache.metrics = None  # a reverted keep leaves the noise pool (select_metrics)
        self.db.execute(f"UPDATE experiments SET {cols} WHERE id = ?", (*fields.values(), exp_id))

    def last_keep(self, before: int | None = None) -> int:
        """The id of the last kept experiment (of those before experiment `before`, when given); 0, the
        baseline, when none was kept."""
        limit = before if before is not None else 2**62
        row = self.db.execute(  # walks the ids down from the limit and stops at the first keep
            "SELECT id FROM experiments WHERE verdict = 'keep' AND id < ? ORDER BY id DESC LIMIT 1", (limit,)
        ).fetchone()
        return int(row[0]) if row else 0

    def branch_head(self) -> str | None:
        """The commit the research branch points at: that of its last move, a keep landing or a revert of one
        that did not hold (None before the first keep). Reverts cascade (a champion a revert put back may be
        reverted in turn, the later revert on the row with the smaller id), so moves are numbered."""
        row = self.db.execute(
            "SELECT COALESCE(revert_commit, kept_commit) FROM experiments WHERE"
            " (verdict = 'keep' AND kept_commit IS NOT NULL) OR revert_commit IS NOT NULL"
            " ORDER BY moved IS NULL DESC, moved DESC, id DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row else None

    def restored_by(self, revert_commit: str) -> int | None:
        """The experiment a revert commit put back as champion (0: the baseline), or None when the commit is no
        revert: the last experiment before the reverted one that was a keep when the revert was made (a keep
        then, or one reverted by a later move)."""
        row = self.db.execute("SELECT id, moved FROM experiments WHERE revert_commit = ?", (revert_commit,)).fetchone()
        if row is None:
            return None
        prior = self.db.execute(
            "SELECT MAX(id) FROM experiments WHERE id > 0 AND id < ? AND kept_commit IS NOT NULL"
            " AND (verdict = 'keep' OR (revert_commit IS NOT NULL AND moved > ?))",
            (row[0], row[1] if row[1] is not None else -1),
        ).fetchone()[0]
        return int(prior) if prior is not None else 0

    def next_move(self) -> int:
        """The number of the branch's next move (`moved`), taken in the transaction that records it. Moves an
        older rsi recorded after this ledger was upgraded (no number: they are the newest, in id order) are
        numbered first."""
        self.db.execute(
            "UPDATE experiments SET moved = (SELECT COALESCE(MAX(moved), 0) FROM experiments) + id"
            " WHERE moved IS NULL AND (kept_commit IS NOT NULL OR revert_commit IS NOT NULL)"
        )
        return int(self.db.execute("SELECT COALESCE(MAX(moved), 0) + 1 FROM experiments").fetchone()[0])

    def experiment(self, exp_id: int) -> Experiment | None:
        """One experiment with its finished runs: read once, then from the cache until something changes it
        (the engine asks for the same few experiments many times per candidate)."""
        if not 0 <= exp_id < 2**63:  # (SQLite's integers: a number typed by a user may be any size)
            return None
        cache = self._cache()
        found = cache.by_id.get(exp_id)
        if found is None:
            rows = self.experiments(where="id = ?", args=(exp_id,))
            if not rows:
                return None
            found = cache.by_id[exp_id] = rows[0]
        clone = copy.copy(found)  # the caller's own copy: runs are shared, never changed once read
        clone.params, clone.runs = dict(found.params), list(found.runs)
        return clone

    def experiments(self, where: str = "1", args: Sequence[Any] = ()) -> list[Experiment]:
        rows = self.db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE {where} ORDER BY id", tuple(args))
        exps = [
            Experiment(
                id=r[0],
                parent=r[1],
                parent_commit=r[2],
                commit_sha=r[3],
                kept_commit=r[4],
                proposer=r[5],
                hypothesis=r[6],
                params=json.loads(r[7]),
                diff=r[8],
                state=r[9],
                status=r[10],
                verdict=r[11],
                reason=r[12],
                interrupts=r[13],
                reverted=bool(r[14]),
                ci=None if r[15] is None else (r[15], r[16]),
                created=r[17],
                finished=r[18],
                revert_commit=r[19],
            )
            for r in rows
        ]
        by_id = {e.id: e for e in exps}
        if by_id:
            marks = ",".join("?" * len(by_id))
            for r in self.db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE experiment IN ({marks}) AND state = 'done' ORDER BY id",
                tuple(by_id),
            ):
                by_id[r[1]].runs.append(Run(*r))
        return exps

    # steering: notes and flags a person leaves for a running research (rsi idea, rsi pause)
    def ideas(self) -> list[dict[str, Any]]:
        found = self.get_json("ideas")
        return list(found) if isinstance(found, list) else []

    def add_idea(self, text: str) -> int:
        with self.transaction():
            ideas = [*self.ideas(), {"text": text, "created": time.time()}]
            self.set("ideas", json.dumps(ideas))
        return len(ideas)

    def run_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def version(self) -> tuple[int, int]:
        """Changes whenever the ledger does: by this thread's connection, or by any other."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0]), self.db.total_changes

    def select_metrics(self) -> Mapping[int, Sequence[float]]:
        """Valid metrics of every experiment's runs of the task's command: the noise estimate pools them. A keep
        reverted after it landed is left out: its runs spread as two levels (those that kept it and those that
        showed it did not hold), not as run-to-run noise. Read it at once: it is the cache's own, and grows as
        runs finish."""
        cache = self._cache()
        if cache.metrics is None:
            cache.metrics = {}
            reverted = self.db.execute("SELECT id FROM experiments WHERE revert_commit IS NOT NULL")
            cache.reverted = {int(r[0]) for r in reverted}
            rows = self.db.execute(
                "SELECT experiment, metric FROM runs WHERE state = 'done' AND status = 'ok' AND metric IS NOT NULL"
                " AND kind IN ('screen', 'confirm', 'fresh')"
                " AND experiment NOT IN (SELECT id FROM experiments WHERE revert_commit IS NOT NULL) ORDER BY id"
            )
            for exp_id, metric in rows:
                cache.metrics.setdefault(int(exp_id), []).append(float(metric))
        return cache.metrics

    def replication_pairs(self) -> tuple[Mapping[int, Mapping[int, float]], Mapping[int, Mapping[int, float]]]:
        """Valid confirmation runs by experiment and seed, and fresh runs by seed and experiment (in the order
        they were made): a candidate's replication pairs are its confirmation runs and the judging champion's
        fresh runs on the same seeds. Read it at once, as select_metrics()."""
        cache = self._cache()
        if cache.seeded is None:
            cache.seeded = {"confirm": {}, "fresh": {}}
            rows = self.db.execute(
                "SELECT experiment, kind, seed, metric FROM runs WHERE state = 'done' AND status = 'ok'"
                " AND metric IS NOT NULL AND kind IN ('confirm', 'fresh') ORDER BY id"
            )
            for exp_id, kind, seed, metric in rows:
                _seeded(cache.seeded, kind, int(exp_id), int(seed), float(metric))
        return cache.seeded["confirm"], cache.seeded["fresh"]

    # runs
    def trajectories(self, exp_id: int, kinds: Sequence[str] = SELECT_KINDS) -> list[list[tuple[float, float]]]:
        """The progress each of the experiment's complete runs of these kinds reported, run by run."""
        marks = ", ".join("?" for _ in kinds)
        rows = self.db.execute(
            f"SELECT progress FROM runs WHERE experiment = ? AND state = 'done' AND status = 'ok'"
            f" AND kind IN ({marks}) AND progress != '[]' ORDER BY id",
            (exp_id, *kinds),
        )
        return [[(float(s), float(v)) for s, v in json.loads(r[0])] for r in rows]

    def start_run(self, exp_id: int, kind: str, seed: int, env: dict[str, str]) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (experiment, kind, seed, state, env, started) VALUES (?, ?, ?, 'running', ?, ?)",
            (exp_id, kind, seed, json.dumps(env), time.time()),
        )
        return int(cur.lastrowid or 0)

    def set_run_pid(self, run_id: int, pid: int, started: float) -> None:
        self.db.execute("UPDATE runs SET pid = ?, pid_started = ? WHERE id = ?", (pid, started, run_id))

    def finish_run(self, run_id: int, **fields: Any) -> None:
        fields["state"] = "done"
        fields["finished"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))
        row = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None:
            run = Run(*row)
            self.db.execute("UPDATE experiments SET interrupts = 0 WHERE id = ?", (run.experiment,))
            self._finished(run)

    def _finished(self, run: Run) -> None:
        """A finished run joins what the cache holds (reading it all again would cost more than the run itself
        on the in-process path)."""
        cache = self._held()
        if cache is None:
            return
        exp = cache.by_id.get(run.experiment)
        if exp is not None:
            exp.interrupts = 0
            bisect.insort(exp.runs, run, key=lambda r: r.id)
        if (
            cache.metrics is not None
            and run.kind in SELECT_KINDS
            and run.status == "ok"
            and run.metric is not None
            and run.experiment not in cache.reverted
        ):
            cache.metrics.setdefault(run.experiment, []).append(float(run.metric))
        if cache.seeded is not None and run.kind in cache.seeded and run.status == "ok" and run.metric is not None:
            _seeded(cache.seeded, run.kind, run.experiment, run.seed, float(run.metric))

    # model calls
    def add_call(
        self,
        experiment: int,
        proposer: str,
        model: str,
        tokens: tuple[int, int],
        cost: float,
        duration: float,
        retries: int,
        error: str,
    ) -> int:
        """The call's row; `finish_call` fills in a call recorded before its answer came."""
        cur = self.db.execute(
            "INSERT INTO calls (experiment, proposer, model, tokens_in, tokens_out, cost_usd, duration_s, retries, "
            "error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (experiment, proposer, model, tokens[0], tokens[1], cost, duration, retries, error, time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish_call(
        self, row: int, tokens: tuple[int, int], cost: float, duration: float, retries: int, error: str
    ) -> None:
        self.db.execute(
            "UPDATE calls SET tokens_in = ?, tokens_out = ?, cost_usd = ?, duration_s = ?, retries = ?, error = ? "
            "WHERE rowid = ?",
            (tokens[0], tokens[1], cost, duration, retries, error, row),
        )

    def spent(self) -> tuple[int, float]:
        """Tokens (in and out) and dollars spent on model calls over the whole research."""
        row = self.db.execute("SELECT COALESCE(SUM(tokens_in + tokens_out), 0), COALESCE(SUM(cost_usd), 0) FROM calls")
        tokens, cost = row.fetchone()
        return int(tokens), float(cost)

    def calls_by_model(self) -> dict[str, dict[str, float]]:
        rows = self.db.execute(
            "SELECT model, COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost_usd), SUM(error NOT IN ('', ?)), "
            "SUM(error = ?) FROM calls GROUP BY model",
            (UNANSWERED_CALL, UNANSWERED_CALL),
        )
        keys = ("calls", "tokens_in", "tokens_out", "cost_usd", "failed", "unanswered")
        return {r[0]: dict(zip(keys, (float(x or 0) for x in r[1:]), strict=True)) for r in rows}

    def interrupted_runs(self) -> list[tuple[int, int, int | None, float | None]]:
        """(run id, experiment, pid, pid start time) of runs the last orchestrator left unfinished."""
        rows = self.db.execute("SELECT id, experiment, pid, pid_started FROM runs WHERE state = 'running'")
        return [(int(r[0]), int(r[1]), r[2], r[3]) for r in rows.fetchall()]

    def restart_baseline(self) -> None:
        """Forget a baseline that gave no metric, its finished runs and verdict, so that it is measured again
        (call in a transaction): nothing was compared with it. A run still marked running is left for recovery
        (its process, if alive, is found and stopped by it)."""
        cache = self._held()
        if cache is not None:
            cache.clear()
        self.db.execute("DELETE FROM runs WHERE experiment = 0 AND state = 'done'")
        self.db.execute(
            "UPDATE experiments SET state = 'proposed', status = NULL, verdict = NULL, reason = '', finished = NULL,"
            " interrupts = 0 WHERE id = 0"
        )

    def drop_interrupted(self, runs: Sequence[tuple[int, int, int | None, float | None]]) -> None:
        """Forget unfinished runs (they are run again) and count the interruption against their experiment."""
        for run_id, exp_id, _, _ in runs:
            self._forget(exp_id)
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self.db.execute("UPDATE experiments SET interrupts = interrupts + 1 WHERE id = ?", (exp_id,))

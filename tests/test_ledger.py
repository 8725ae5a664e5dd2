"""The ledger: WAL mode, versioned schema, upgrades of older ledgers, clear errors for foreign files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from rsi.errors import UserError
from rsi.ledger import SCHEMA_VERSION, Ledger

V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE experiments (id INTEGER PRIMARY KEY, parent INTEGER, parent_commit TEXT, commit_sha TEXT,
  kept_commit TEXT, proposer TEXT NOT NULL, hypothesis TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{}',
  diff TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, status TEXT, verdict TEXT, reason TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, finished REAL);
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment INTEGER NOT NULL, kind TEXT NOT NULL,
  seed INTEGER NOT NULL, state TEXT NOT NULL, status TEXT, metric REAL, reason TEXT NOT NULL DEFAULT '',
  returncode INTEGER, duration_s REAL, peak_memory_mb REAL, pid INTEGER, pid_started REAL,
  stdout_tail TEXT NOT NULL DEFAULT '', stderr_tail TEXT NOT NULL DEFAULT '', env TEXT NOT NULL DEFAULT '{}',
  started REAL NOT NULL, finished REAL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO experiments (id, proposer, hypothesis, state, status, verdict, created) VALUES
  (0, 'baseline', 'baseline', 'done', 'ok', 'baseline', 0), (1, 'knobs', 'lr 1 -> 2', 'done', 'ok', 'keep', 0);
INSERT INTO runs (experiment, kind, seed, state, status, metric, started) VALUES
  (0, 'select', 1, 'done', 'ok', 3.0, 0), (0, 'select', 2, 'done', 'ok', 3.2, 0),
  (1, 'select', 1, 'done', 'ok', 2.0, 0);
"""


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.get("schema_version") == str(SCHEMA_VERSION)


def test_an_older_ledger_is_upgraded_even_when_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.commit()
    db.close()
    ledger = Ledger(path, readonly=True)
    base, kept = ledger.experiments()
    assert base.mean() == pytest.approx(3.1) and [r.kind for r in base.runs] == ["fresh", "fresh"]
    assert kept.metrics() == [2.0] and kept.runs[0].kind == "screen" and kept.reverted is False
    assert kept.revert_commit is None and ledger.branch_head() is None  # a keep with no kept commit recorded
    assert ledger.get("schema_version") == str(SCHEMA_VERSION)


def test_a_newer_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).set("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(UserError, match="newer rsi"):
        Ledger(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError, match="not an rsi ledger"):
        Ledger(junk, readonly=True)
    with pytest.raises(UserError, match="not an rsi ledger"):
        Ledger(junk)


def test_a_reader_never_sees_a_half_made_ledger(tmp_path: Path) -> None:
    """`rsi status` polled while `rsi run` creates the ledger: the file is absent or whole, never 'damaged'."""
    for i in range(40):
        path = tmp_path / f"{i}" / "ledger.sqlite"
        writer = threading.Thread(target=lambda p=path: Ledger(p).close())
        writer.start()
        seen = 0
        while writer.is_alive() or seen == 0:
            if path.exists():
                reader = Ledger(path, readonly=True)
                assert reader.get("schema_version") == str(SCHEMA_VERSION)
                reader.close()
                seen += 1
        writer.join()
        assert not path.with_name(path.name + ".new").exists()


def _experiment(ledger: Ledger, exp_id: int) -> None:
    ledger.add_experiment(
        exp_id=exp_id,
        parent=None,
        parent_commit=None,
        commit_sha="c",
        proposer="knobs",
        hypothesis="h",
        params={"lr": 1},
        diff="",
    )


def _run(ledger: Ledger, exp_id: int, metric: float) -> int:
    run_id = ledger.start_run(exp_id, "screen", 1, {})
    with ledger.transaction():
        ledger.finish_run(run_id, status="ok", metric=metric)
    return run_id


def test_what_the_ledger_caches_follows_every_write(tmp_path: Path) -> None:
    """Experiments and select metrics are read once and then served from a cache: it must follow this
    connection's writes, another connection's commits (another thread or process) and rolled-back writes."""
    path = tmp_path / "ledger.sqlite"
    ledger, other = Ledger(path), Ledger(path)
    _experiment(ledger, 1)
    _run(ledger, 1, 2.0)
    first = ledger.experiment(1)
    assert first is not None and [r.metric for r in first.runs] == [2.0]
    assert dict(ledger.select_metrics()) == {1: [2.0]}

    _run(ledger, 1, 3.0)  # this connection's own write
    again = ledger.experiment(1)
    assert again is not None and [r.metric for r in again.runs] == [2.0, 3.0]
    assert dict(ledger.select_metrics()) == {1: [2.0, 3.0]}
    assert [r.metric for r in first.runs] == [2.0]  # a copy read earlier is the caller's own

    _run(other, 1, 4.0)  # another connection's commit
    other.update_experiment(1, verdict="keep", reason="by the other")
    seen = ledger.experiment(1)
    assert seen is not None and [r.metric for r in seen.runs] == [2.0, 3.0, 4.0]
    assert (seen.verdict, seen.reason) == ("keep", "by the other")
    assert dict(ledger.select_metrics()) == {1: [2.0, 3.0, 4.0]}

    with pytest.raises(RuntimeError), ledger.transaction():  # a write that never lands
        ledger.update_experiment(1, reason="rolled back")
        inside = ledger.experiment(1)
        assert inside is not None and inside.reason == "rolled back"
        raise RuntimeError("abandon")
    after = ledger.experiment(1)
    assert after is not None and after.reason == "by the other"

    seen.runs.clear()
    seen.params["lr"] = 99  # what a caller does to its copy stays there
    kept = ledger.experiment(1)
    assert kept is not None and len(kept.runs) == 3 and kept.params == {"lr": 1}
    assert ledger.experiment(2) is None
    _experiment(other, 2)
    assert ledger.experiment(2) is not None


def test_the_cache_of_an_in_memory_ledger_is_shared_by_its_threads() -> None:
    ledger = Ledger(Path(":memory:"))
    _experiment(ledger, 1)
    empty = ledger.experiment(1)
    assert empty is not None and not empty.runs
    worker = threading.Thread(target=_run, args=(ledger, 1, 5.0))
    worker.start()
    worker.join()
    seen = ledger.experiment(1)
    assert seen is not None and [r.metric for r in seen.runs] == [5.0]
    assert dict(ledger.select_metrics()) == {1: [5.0]}


def test_moves_an_older_rsi_recorded_after_the_upgrade_are_the_newest(tmp_path: Path) -> None:
    """An older rsi still running when a newer one upgraded the ledger records keeps without a move number:
    they are the branch's newest moves, and numbered before the next one."""
    ledger = Ledger(tmp_path / "l.sqlite")
    for i, sha in ((1, "a" * 40), (2, "b" * 40)):  # this rsi's keep, numbered; then the older rsi's
        with ledger.transaction():
            ledger.add_experiment(
                exp_id=i, parent=0, parent_commit=None, commit_sha=sha, proposer="p", hypothesis="h", params={}, diff=""
            )
            moved = {"moved": ledger.next_move()} if i == 1 else {}
            ledger.update_experiment(i, state="done", verdict="keep", kept_commit=sha, **moved)
    assert ledger.branch_head() == "b" * 40
    with ledger.transaction():
        move = ledger.next_move()
    first, second = (r[0] for r in ledger.db.execute("SELECT moved FROM experiments WHERE id IN (1, 2) ORDER BY id"))
    assert first < second < move and ledger.branch_head() == "b" * 40

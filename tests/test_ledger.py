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

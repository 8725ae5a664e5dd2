"""The shipped examples and `rsi demo`, run for real (short budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import git, rsi

from rsi.demo import create


@pytest.mark.slow
@pytest.mark.timeout(480)  # 2.5 minutes, the corpus, the summary; a CI machine beside another test is slow
def test_demo_tinygpt_trains_evaluates_and_reports(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    # 2.5 minutes: on a loaded machine 1.5 held only the baseline
    p = rsi("demo", "--minutes", "2.5", "--dir", str(root), "--budget", "2s")
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["task"] == "tinygpt" and s["metric"] == "val_bpb"
    base = s["experiments"][0]
    assert base["seeds"][:3] == [1, 2, 3] and all(2.0 < m < 8.5 for m in base["runs"])  # bits per byte, tiny model
    assert s["baseline"]["holdout"] is not None  # the frozen evaluator's test split ran for the baseline
    assert len(s["experiments"]) >= 2
    assert "held-out" in p.stdout and "report:" in p.stdout
    assert (root / ".rsi" / "report.html").exists()
    # the corpus was built once by [task] setup into the shared cache, outside git
    cache = root / ".rsi" / "cache" / "tinygpt"
    assert {f.name for f in cache.iterdir()} == {"train.bin", "val.bin", "test.bin"}
    assert git(root, "status", "--porcelain") == ""


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 90 runs of a few seconds each: past the 300 s that catches a hung test when slow
def test_tabular_improves_its_held_out_score_within_30_experiments(tmp_path: Path) -> None:
    root = create("tabular", tmp_path / "tab")
    p = rsi("run", str(root), "--max-experiments", "30")
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["goal"] == "maximize"
    assert len(s["experiments"]) == 30
    kept = [e for e in s["experiments"] if e["verdict"] == "keep"]
    assert kept, "nothing kept in 30 experiments"
    assert kept[-1]["holdout"] > s["baseline"]["holdout"]


def test_demo_refuses_a_non_empty_directory_and_unknown_examples(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    p = rsi("demo", "--dir", str(tmp_path / "x"), "--example", "sgd")
    assert p.returncode == 2 and "not empty" in p.stderr
    p = rsi("demo", "--example", "mnist")
    assert p.returncode == 2 and "unknown example" in p.stderr
    p = rsi("demo", "--example", "sgd", "--budget", "soon", "--dir", str(tmp_path / "y"))
    assert p.returncode == 2 and "--budget" in p.stderr
    p = rsi("demo", "--example", "tabular", "--budget", "2s", "--dir", str(tmp_path / "z"))  # (it was ignored)
    assert p.returncode == 2 and "--budget sets tinygpt's training time" in p.stderr


def test_demo_sgd_runs_offline_and_improves(tmp_path: Path) -> None:
    root = tmp_path / "sgd"
    p = rsi("demo", "--example", "sgd", "--minutes", "0.25", "--dir", str(root))
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(rsi("status", str(root), "--json").stdout)
    assert s["best"]["metric"] < s["baseline"]["metric"]

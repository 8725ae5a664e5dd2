"""Tests for rsi.report: the HTML report and progress.png, written from ledgers of real short researches."""

from __future__ import annotations

import re
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeTask, git, rsi

from rsi.errors import UserError
from rsi.ledger import Ledger
from rsi.report import read, staircase, write_report
from rsi.status import status_json

# Crashes for deep models, so a research meets both failures and improvements.
CRASHY = """\
import os, random
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]))
if DEPTH > 5:
    raise SystemExit(1)
print(f"loss: {(lr - 0.12) ** 2 * 10 + 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""

# Reads the candidate's settings, so held-out numbers follow selection only part of the way.
HELDOUT = """\
import re, pathlib
src = pathlib.Path("train.py").read_text()
lr = float(re.search(r"^lr = (\\S+)", src, re.M).group(1))
depth = int(re.search(r"^DEPTH = (\\S+)", src, re.M).group(1))
print(f"test_loss: {(lr - 0.2) ** 2 * 10 + 0.1 * (depth - 6) ** 2:.6f}")
"""

HOLDOUT_TOML = f"""
[holdout]
command = "{sys.executable} heldout.py"
pattern = '^test_loss:\\s*(\\S+)'
"""

SCORE = """\
import os, random
lr = 0.5
DEPTH = 3
random.seed(int(os.environ["RSI_SEED"]))
print(f"score: {10 - (lr - 0.12) ** 2 * 10 - 0.1 * (DEPTH - 7) ** 2 + random.gauss(0, 0.01):.6f}")
"""


def research(root: Path, n: int = 12) -> dict[str, Any]:
    r = rsi("run", str(root), "--max-experiments", str(n))
    assert r.returncode == 0, r.stderr
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    try:
        return status_json(ledger)
    finally:
        ledger.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def rows_of(html: str) -> list[str]:
    return re.findall(r'<tr class="exp exp-(\w+)">', html)


def test_report_of_a_research_with_holdout_and_crashes(make_task: MakeTask) -> None:
    root = make_task(train=CRASHY, files={"heldout.py": HELDOUT}, extra_toml=HOLDOUT_TOML)
    status = research(root)
    exps: list[dict[str, Any]] = status["experiments"]
    crashed = [e for e in exps if e["status"] == "crash"]
    kept = [e for e in exps if e["verdict"] == "keep"]
    assert crashed and kept, "the research should meet both failures and improvements"

    html_path = write_report(root)
    assert html_path == root / ".rsi" / "report.html"
    nowhere = rsi("report", str(root), "--out", "/proc/report.html")  # a place no file can be written
    assert nowhere.returncode == 2 and len(nowhere.stderr.strip().splitlines()) == 1, nowhere.stderr
    assert "cannot write the report" in nowhere.stderr
    html = html_path.read_text()

    # self-contained: nothing fetched from elsewhere, both figures embedded
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == 2
    width, height = png_size(root / ".rsi" / "progress.png")
    assert width > 600 and height > 300
    assert (root / ".rsi" / "progress.png").stat().st_size > 10_000

    # one row per experiment, failures marked as such
    groups = rows_of(html)
    assert len(groups) == len(exps)
    assert groups.count("failed") == len(crashed)
    assert groups[0] == "champion" and groups.count("champion") == 1 + len(kept)

    # held-out: the figure, and both gains as numbers
    assert "No [holdout] was configured" not in html
    assert f"{status['selection_gain']:.6g}" in html and f"{status['holdout_gain']:.6g}" in html

    # kept diffs, coloured and escaped
    assert html.count('class="kept"') == len(kept)
    assert '<span class="add">+lr = ' in html and '<span class="del">-lr = ' in html
    assert "os.environ[&#34;RSI_SEED&#34;]" in html and "DEPTH &gt; 5" in html


def test_untrusted_text_is_escaped_and_out_can_be_elsewhere(make_task: MakeTask, tmp_path: Path) -> None:
    root = make_task()
    research(root, n=3)
    evil = "<script>alert(1)</script>"
    db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
    with db:
        db.execute("UPDATE experiments SET verdict = 'keep', hypothesis = ?, reason = ? WHERE id = 1", (evil, evil))
        db.execute("UPDATE experiments SET diff = ? WHERE id = 1", (f"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+{evil}\n",))
        db.execute("UPDATE meta SET value = ? WHERE key = 'task'", (evil,))
    db.close()

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    html_path = write_report(root, out_dir / "r.html")
    assert html_path == out_dir / "r.html"
    assert (out_dir / "progress.png").is_file()
    html = html_path.read_text()
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # title, heading, table, diff
    assert '<span class="add">+&lt;script&gt;' in html


def test_maximize_staircase_goes_up_and_no_holdout_is_said(make_task: MakeTask) -> None:
    root = make_task(train=SCORE)
    toml = (root / "rsi.toml").read_text()
    toml = toml.replace('name = "loss"', 'name = "score"').replace("minimize", "maximize").replace("loss:", "score:")
    (root / "rsi.toml").write_text(toml)
    git(root, "commit", "-qam", "maximize")
    status = research(root)
    assert status["goal"] == "maximize"

    html = write_report(root).read_text()
    assert "score (maximize)" in html
    assert "No [holdout] was configured" in html
    assert html.count("data:image/png;base64,") == 1

    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    try:
        _, rows = read(ledger)
    finally:
        ledger.close()
    xs, ys = staircase(rows)
    assert len(xs) >= 3, "the research should keep at least one change"
    assert xs == sorted(xs) and ys == sorted(ys)  # up, for maximize
    assert ys[-1] > ys[0]


def test_missing_research_or_folder_is_a_user_error(make_task: MakeTask, tmp_path: Path) -> None:
    root = make_task()
    with pytest.raises(UserError, match="no research here yet"):
        write_report(root)
    Ledger(root / ".rsi" / "ledger.sqlite").close()  # a research that has not measured anything yet
    with pytest.raises(UserError, match="does not exist") as err:
        write_report(root, tmp_path / "nowhere" / "r.html")
    assert "\n" not in str(err.value)
    html = write_report(root).read_text()
    assert rows_of(html) == [] and "No change was kept" in html
    png_size(root / ".rsi" / "progress.png")

"""Steering a research while it runs: `rsi idea` reaches the LLM's prompt, `rsi pause` holds a running `rsi run`
and `rsi resume` lets it go on, without a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import MakeTask, rsi
from fake_llm import reply, serve
from test_llm import KEY, edit, toml
from test_resume import SLOW

from rsi.ledger import Ledger


def test_an_idea_reaches_the_llm_prompt_from_the_next_proposal(make_task: MakeTask) -> None:
    steps = [reply(edit("train.py", "lr = 0.5", "lr = 0.3")), reply(edit("train.py", "DEPTH = 3", "DEPTH = 5"))]
    with serve(steps) as (url, script):
        root = make_task(extra_toml=toml(url))
        first = rsi("run", str(root), "--max-experiments", "2", env={"FAKE_LLM_KEY": KEY})
        assert first.returncode == 0, first.stderr
        before = len(script.prompts())
        noted = rsi("idea", "try a cosine learning-rate schedule", str(root))
        assert noted.returncode == 0, noted.stderr
        again = rsi("run", str(root), "--max-experiments", "3", env={"FAKE_LLM_KEY": KEY})
        assert again.returncode == 0, again.stderr
        prompts = script.prompts()
    assert all("cosine" not in p for p in prompts[:before])
    assert "Ideas from the researcher" in prompts[-1] and "try a cosine learning-rate schedule" in prompts[-1]
    assert "Propose one change at a time" in prompts[-1]  # the research program's advice, before program.md
    ideas = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True).ideas()
    assert [i["text"] for i in ideas] == ["try a cosine learning-rate schedule"]


def count(root: Path) -> int:
    path = root / ".rsi" / "ledger.sqlite"
    return Ledger(path, readonly=True).count() if path.exists() else 0


def test_pause_holds_a_running_research_and_resume_lets_it_go_on(make_task: MakeTask) -> None:
    root = make_task(train=SLOW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsi", "run", str(root), "--max-experiments", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while count(root) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert rsi("pause", str(root)).returncode == 0
        time.sleep(4)  # the experiment in flight finishes; no new one starts
        held = count(root)
        time.sleep(3)
        assert count(root) == held < 12 and proc.poll() is None
        assert rsi("resume", str(root)).returncode == 0
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert count(root) == 12
    assert "paused by `rsi pause`" in out + err and "resumed" in out + err


def test_steering_a_folder_without_a_research_is_one_line(make_task: MakeTask, tmp_path: Path) -> None:
    for args in (["pause", str(tmp_path)], ["resume", str(tmp_path)], ["idea", "x", str(tmp_path)]):
        done = rsi(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
    root = make_task()
    assert rsi("run", str(root), "--max-experiments", "1").returncode == 0
    empty = rsi("idea", "  ", str(root))
    assert empty.returncode == 2 and "empty" in empty.stderr

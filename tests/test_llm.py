"""LLM researchers over real HTTP: fake OpenAI and Anthropic servers on 127.0.0.1, the official SDKs, `rsi run`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import MakeTask, rsi
from fake_llm import Step, failure, reply, serve

from rsi.edits import EditError, FileEdit, apply, parse
from rsi.models import BREAKER_FAILURES, RETRIES, Caller, Completion, Transient

KEY = "sk-test-secret-4f1d"
HOLDOUT_MARK = "4242.4242"


def edit(path: str, search: str, replace: str, hypothesis: str = "a change") -> str:
    return f"Hypothesis: {hypothesis}\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def toml(url: str, provider: str = "openai", extra: str = "") -> str:
    base = f"{url}/v1" if provider == "openai" else url
    return f"""
[holdout]
command = "echo 'test: {HOLDOUT_MARK}'"
pattern = '^test:\\s*(\\S+)'

[judge]
baseline_repeats = 3

[proposer]
kind = "llm"
{extra}

[[proposer.models]]
provider = "{provider}"
model = "fake-model"
base_url = "{base}"
api_key_env = "FAKE_LLM_KEY"
price_in = 2.0
price_out = 10.0
timeout = "2s"
"""


def ledger_rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(root / ".rsi" / "ledger.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def recorded_bytes(root: Path) -> bytes:
    state = root / ".rsi"
    return b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file() and "worktrees" not in p.parts)


@pytest.mark.slow
def test_openai_compatible_server_every_kind_of_reply(make_task: MakeTask) -> None:
    steps = [
        reply(edit("train.py", "lr = 0.5", "lr = 0.12", "lower the learning rate")),
        reply("I think the learning rate should be lower."),
        reply(edit("frozen.py", "VALUE = 1", "VALUE = 2")),
        reply(edit("../evil.py", "", "import os")),
        failure(429, headers={"retry-after": "1"}),
        reply(edit("train.py", "DEPTH = 3", "DEPTH = 7", "a deeper model")),
        failure(500, headers={"retry-after": "0"}),
        Step(text=edit("train.py", "DEPTH = 7", "DEPTH = 6"), delay=4.0),
        reply(""),
        reply("x" * 3_000_000),
    ]
    with serve(steps) as (url, script):
        root = make_task(extra_toml=toml(url))
        proc = rsi("run", str(root), "--max-experiments", "8", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    # Proposals are made while experiments run, and one made for a champion that a keep replaced is dropped,
    # so which reply became which experiment depends on timing: the checks are on what was recorded at all.
    rows = ledger_rows(root, "SELECT id, status, verdict, reason FROM experiments WHERE id > 0 ORDER BY id")
    assert len(rows) == 7
    assert any(r[2] == "keep" for r in rows), rows
    reasons = " | ".join(str(r[3]) for r in rows if r[1] == "rejected")
    for why in ("frozen", "outside the repository", "no edit"):
        assert why in reasons, (why, reasons)
    calls = ledger_rows(root, "SELECT experiment, tokens_in, tokens_out, cost_usd, retries, error FROM calls")
    assert sum(1 + int(str(c[4])) for c in calls) == len(script.requests)  # every request accounted for
    assert {int(str(c[4])) for c in calls if c[5] == ""} >= {1, 2}  # 429 then a reply; 500, timeout, reply
    assert all(c[3] == pytest.approx((1000 * 2.0 + 200 * 10.0) / 1e6) for c in calls)
    prompts = script.prompts()
    assert all(KEY not in p and HOLDOUT_MARK not in p for p in prompts)
    assert "lower the learning rate" in prompts[-1]  # the ledger is the model's memory
    assert all(h.get("authorization") == f"Bearer {KEY}" for h in script.headers)
    assert KEY.encode() not in recorded_bytes(root)
    status = json.loads(rsi("status", str(root), "--json").stdout)
    assert status["models"]["fake-model"]["calls"] == len(calls)


def test_anthropic_messages_server(make_task: MakeTask) -> None:
    with serve([reply(edit("train.py", "lr = 0.5", "lr = 0.12"), tokens=(300, 40))]) as (url, script):
        root = make_task(extra_toml=toml(url, provider="anthropic"))
        proc = rsi("run", str(root), "--max-experiments", "2", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    sent = script.headers[0]
    assert KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert script.requests[0]["system"].startswith("You are a careful ML research engineer")
    (call,) = ledger_rows(root, "SELECT tokens_in, tokens_out, cost_usd FROM calls")
    assert call == (300, 40, pytest.approx((300 * 2.0 + 40 * 10.0) / 1e6))
    assert ledger_rows(root, "SELECT verdict FROM experiments WHERE id = 1") == [("keep",)]


def test_a_model_that_only_talks_is_benched_and_the_run_ends(make_task: MakeTask) -> None:
    with serve([reply("Let us think step by step about learning rates.")]) as (url, _):
        root = make_task(extra_toml=toml(url))
        proc = rsi("run", str(root), "--max-experiments", "100", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    assert "benched" in proc.stdout, proc.stdout
    assert ledger_rows(root, "SELECT COUNT(*) FROM experiments WHERE status = 'rejected'") == [(8,)]


def test_the_cost_cap_stops_proposing(make_task: MakeTask) -> None:
    good = [reply(edit("train.py", "lr = 0.5", f"lr = 0.{i}")) for i in (4, 3, 2)]
    with serve(good) as (url, _):
        root = make_task(extra_toml=toml(url, extra="max_cost_usd = 0.005"))
        proc = rsi("run", str(root), "--max-experiments", "100", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    assert "cost cap of $0.005 is reached" in proc.stdout
    assert ledger_rows(root, "SELECT COUNT(*) FROM calls") == [(2,)]  # $0.004 each


def test_a_call_the_time_budget_stopped_waiting_for_stays_on_record(make_task: MakeTask) -> None:
    """The model still thinking when the time budget runs out: the research stops on time, and the call is in
    the ledger and in `rsi status` as one with no answer (what it cost is unknown), not missing."""
    slow = Step(text=edit("train.py", "lr = 0.5", "lr = 0.3"), delay=60.0)
    with serve([reply(edit("train.py", "lr = 0.5", "lr = 0.4")), slow]) as (url, script):
        root = make_task(extra_toml=toml(url).replace('timeout = "2s"', 'timeout = "120s"'))
        proc = rsi("run", str(root), "--time-budget", "15s", env={"FAKE_LLM_KEY": KEY})
        assert len(script.requests) == 2  # the second call was made, and not answered
    assert proc.returncode == 0, proc.stderr
    calls = ledger_rows(root, "SELECT tokens_in, error FROM calls ORDER BY rowid")
    assert len(calls) == 2 and calls[0] == (1000, ""), calls
    assert calls[1][0] == 0 and str(calls[1][1]).startswith("no answer recorded"), calls
    status = rsi("status", str(root))
    (line,) = [x for x in status.stdout.splitlines() if x.startswith("model fake-model:")]
    assert line.startswith("model fake-model: 2 calls, 1200 tokens,") and "failed" not in line, line
    assert line.endswith(", 1 with no answer (in flight, or left when the research stopped)"), line


def test_a_crash_goes_back_to_the_model_and_the_fix_is_its_child(make_task: MakeTask) -> None:
    steps = [
        reply(edit("train.py", "DEPTH = 3", "DEPTH = 3\nraise RuntimeError('boom-17')", "deeper")),
        reply(edit("train.py", "lr = 0.5", "lr = 0.9", "a higher rate")),  # made while #1 ran; not kept
        reply(edit("train.py", "raise RuntimeError('boom-17')", "DEPTH = 7", "fix: deeper")),
    ]
    with serve(steps) as (url, script):
        root = make_task(extra_toml=toml(url))
        proc = rsi("run", str(root), "--max-experiments", "4", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    rows = ledger_rows(root, "SELECT id, parent, status FROM experiments ORDER BY id")
    assert rows[1][2] == "crash" and rows[3][1] == 1 and rows[3][2] == "ok", rows
    assert "boom-17" in script.prompts()[2] and "crashed" in script.prompts()[2]


def test_a_missing_key_is_one_line_and_exit_2(make_task: MakeTask) -> None:
    root = make_task(extra_toml=toml("http://127.0.0.1:9"))
    proc = rsi("run", str(root), env={"FAKE_LLM_KEY": ""})
    assert proc.returncode == 2 and "FAKE_LLM_KEY is not set" in proc.stderr and "Traceback" not in proc.stderr


# edits, without a server


def test_edits_apply_exactly_or_by_a_unique_whitespace_tolerant_match() -> None:
    files = {"a.py": "def f():\n    x = 1\n    return x\n"}
    exact = parse(edit("a.py", "    x = 1", "    x = 2"))
    assert apply(files, exact.edits)["a.py"] == "def f():\n    x = 2\n    return x\n"
    loose = parse(edit("a.py", "x = 1\nreturn x", "    x = 3\n    return x"))
    assert apply(files, loose.edits)["a.py"] == "def f():\n    x = 3\n    return x\n"
    twice = {"a.py": "x = 1\nx = 1\n"}
    with pytest.raises(EditError, match="occurs 2 times"):
        apply(twice, parse(edit("a.py", "x = 1", "x = 2")).edits)
    with pytest.raises(EditError, match="not found"):
        apply(files, parse(edit("a.py", "y = 5", "y = 6")).edits)


def test_edits_parse_fences_whole_files_and_refuse_broken_blocks() -> None:
    text = "Hypothesis: two files\n```python\na.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n```\n"
    text += "notes.md\n```\nhello\n```\n"
    r = parse(text)
    assert r.hypothesis == "two files"
    assert r.edits == [FileEdit("a.py", [("x = 1", "x = 2")]), FileEdit("notes.md", [], "hello\n")]
    for broken, why in [
        ("a.py\n<<<<<<< SEARCH\nx = 1\n>>>>>>> REPLACE\n", "no ======="),
        ("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n", "no >>>>>>> REPLACE"),
        ("<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n", "no file path"),
        ("just words", "no edit"),
    ]:
        with pytest.raises(EditError, match=why):
            parse(broken)


# retries and the circuit breaker, without a server


class Flaky:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def complete(self, system: str, user: str) -> Completion:
        self.calls += 1
        if self.calls <= self.failures:
            raise Transient("HTTP 503")
        return Completion("ok", 1, 1)


def test_backoff_doubles_and_the_breaker_opens_after_failed_calls() -> None:
    waits: list[float] = []
    caller = Caller(Flaky(2), sleep=waits.append)
    assert caller.call("s", "u").completion is not None
    assert len(waits) == 2 and 1.0 <= waits[0] <= 1.5 and 2.0 <= waits[1] <= 3.0
    dead = Caller(Flaky(10**6), sleep=lambda s: None)
    for _ in range(BREAKER_FAILURES):
        attempt = dead.call("s", "u")
        assert attempt.completion is None and attempt.retries == RETRIES
    assert not dead.available() and "breaker open" in attempt.error


# the swarm


def test_a_swarm_of_knobs_and_a_model_shares_the_research(make_task: MakeTask) -> None:
    steps = [reply(edit("train.py", "DEPTH = 3", f"DEPTH = {d}", f"depth {d}")) for d in (7, 6, 8, 5, 4)]
    with serve(steps) as (url, _):
        root = make_task(extra_toml=toml(url).replace('kind = "llm"', 'kind = "swarm"'))
        proc = rsi("run", str(root), "--max-experiments", "10", env={"FAKE_LLM_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    status = json.loads(rsi("status", str(root), "--json").stdout)
    members = status["proposers"]
    assert set(members) == {"knobs", "llm:fake-model"}
    assert all(m["proposals"] >= 1 for m in members.values())
    assert sum(m["share"] for m in members.values()) == pytest.approx(1.0)
    assert members["llm:fake-model"]["cost_usd"] > 0 and members["knobs"]["cost_usd"] == 0
    assert "proposer llm:fake-model:" in rsi("status", str(root)).stdout


def test_the_bandit_favours_keeps_per_dollar(tmp_path: Path) -> None:
    from rsi.ledger import Ledger
    from rsi.swarm import bandit_table

    ledger = Ledger(tmp_path / "l.sqlite")
    rows = [("a", "keep"), ("a", "keep"), ("a", "discard"), ("b", "discard"), ("b", "discard"), ("b", "discard")]
    rows += [("c", "keep"), ("c", "keep"), ("c", "discard")]
    for i, (who, verdict) in enumerate(rows, start=1):
        ledger.add_experiment(
            exp_id=i,
            parent=0,
            parent_commit="x",
            commit_sha=None,
            proposer=who,
            hypothesis="h",
            params={},
            diff="",
            state="done",
            status="ok",
            verdict=verdict,
            reason="",
        )
    ledger.add_call(7, "c", "m", (1000, 100), 1.0, 1.0, 0, "")  # c keeps as often as a, at a dollar a try
    table = bandit_table(ledger, ["a", "b", "c", "d"])
    assert table["d"]["index"] == float("inf")  # never tried: goes first
    assert table["a"]["index"] > table["c"]["index"] > 0
    assert table["a"]["index"] > table["b"]["index"]

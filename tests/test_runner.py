"""Tests for the runner: real subprocesses, real scripts, every status."""

from __future__ import annotations

import _thread
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rsi.errors import UserError
from rsi.runner import (
    BUSY,
    SECRET_PATTERNS,
    TERM_GRACE_S,
    MetricSpec,
    RunResult,
    RunSpec,
    _Capture,
    parse_metric_text,
    run,
    scrub_env,
    to_metric,
)
from rsi.sandbox import Bubblewrap, Limits, View

LOSS = r"^loss:\s*(\S+)"
PY = shlex.quote(sys.executable)


def spec_for(
    tmp_path: Path,
    command: str,
    *,
    metric: MetricSpec | None = None,
    timeout_s: float = 30.0,
    memory_bytes: int | None = None,
    output_cap: int = 1_000_000,
    env: dict[str, str] | None = None,
) -> RunSpec:
    return RunSpec(
        command=command,
        cwd=tmp_path,
        env=env if env is not None else dict(os.environ),
        timeout_s=timeout_s,
        memory_bytes=memory_bytes,
        output_cap=output_cap,
        log_dir=tmp_path / "logs",
        metric=metric or MetricSpec(pattern=LOSS),
    )


def script(tmp_path: Path, body: str, name: str = "task.py") -> str:
    """Writes a Python script into the task directory and returns the command that runs it."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{PY} {shlex.quote(str(path))}"


def run_script(tmp_path: Path, body: str, **kwargs: Any) -> RunResult:
    return run(spec_for(tmp_path, script(tmp_path, body), **kwargs))


def alive(pid: int) -> bool:
    """A zombie is dead for our purpose: it holds no memory and runs no code."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_dead(pid: int, within_s: float = 2.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


# ok and metric parsing


def test_ok_last_match_wins(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print('loss: 3.0')\nprint('loss: 2.0')\nprint('loss: 1.5')\n")
    assert result.status == "ok"
    assert result.metric == 1.5
    assert result.returncode == 0
    assert "loss: 1.5" in result.stdout_tail
    assert (tmp_path / "logs" / "stdout.log").read_text() == "loss: 3.0\nloss: 2.0\nloss: 1.5\n"
    assert (tmp_path / "logs" / "stderr.log").read_text() == ""


def test_stderr_is_searched_when_stdout_has_no_match(tmp_path: Path) -> None:
    body = "import sys\nprint('step 1')\nprint('loss: 0.7', file=sys.stderr)\n"
    result = run_script(tmp_path, body)
    assert (result.status, result.metric) == ("ok", 0.7)
    assert "loss: 0.7" in result.stderr_tail


def test_stdout_match_beats_stderr_match(tmp_path: Path) -> None:
    body = "import sys\nprint('loss: 9', file=sys.stderr)\nprint('loss: 1')\n"
    assert run_script(tmp_path, body).metric == 1.0


def test_parse_metric_text_and_to_metric() -> None:
    assert parse_metric_text(LOSS, "loss: 1\nloss: 2\n", "loss: 3") == "2"
    assert parse_metric_text(LOSS, "nothing", "x\nloss: 3\n") == "3"
    assert parse_metric_text(LOSS, "val loss: 1", "") is None  # anchored: MULTILINE, not DOTALL
    assert parse_metric_text(r"^acc=\d+\.\d+", "acc=0.91", "") == "acc=0.91"  # no group: whole match
    assert to_metric(" 2.5 ") == 2.5
    assert to_metric("1e-3") == 0.001
    for bad in ("nan", "inf", "-inf", "NaN", "abc", ""):
        assert to_metric(bad) is None


# failures


def test_exit_code_1_is_crash(tmp_path: Path) -> None:
    result = run_script(tmp_path, "raise ValueError('bad learning rate')\n")
    assert result.status == "crash"
    assert result.returncode == 1
    assert result.metric is None
    assert result.reason.startswith("exit code 1")
    assert "bad learning rate" in result.reason


def test_metric_then_nonzero_exit_is_crash(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import sys\nprint('loss: 1.0', flush=True)\nsys.exit(3)\n")
    assert (result.status, result.metric, result.returncode) == ("crash", None, 3)
    assert "exit code 3" in result.reason


def test_command_not_found_is_crash(tmp_path: Path) -> None:
    result = run(spec_for(tmp_path, "no-such-command-rsi-test --flag"))
    assert result.status == "crash"
    assert result.returncode == 127
    assert "command not found" in result.reason


def test_timeout_kills_a_sleeping_script(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import time\nprint('loss: 1', flush=True)\ntime.sleep(60)\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert result.metric is None
    assert result.reason == "killed after 1s wall clock"
    assert 0.9 < result.duration_s < 5


@pytest.mark.slow
def test_timeout_kills_a_script_that_ignores_sigterm(tmp_path: Path) -> None:
    body = f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(tmp_path / "pid")!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.1)
    """
    result = run_script(tmp_path, body, timeout_s=1.0)
    assert result.status == "timeout"
    assert 1.0 + TERM_GRACE_S - 0.1 < result.duration_s < 10  # the grace was given, then SIGKILL
    assert wait_dead(int((tmp_path / "pid").read_text()))


def test_timeout_lets_the_script_flush_on_sigterm(tmp_path: Path) -> None:
    body = """
        import signal, sys, time
        def flush(*_):
            time.sleep(0.3)
            open('flushed', 'w').write('yes')
            sys.exit(1)
        signal.signal(signal.SIGTERM, flush)
        time.sleep(60)
    """
    result = run_script(tmp_path, body, timeout_s=0.5)
    assert result.status == "timeout"
    assert (tmp_path / "flushed").read_text() == "yes"
    assert result.duration_s < 0.5 + TERM_GRACE_S


def test_memory_limit_kills_the_tree(tmp_path: Path) -> None:
    body = """
        import time
        block = bytearray(600_000_000)
        for i in range(0, len(block), 4096):
            block[i] = 1
        print('loss: 1', flush=True)
        time.sleep(30)
    """
    result = run_script(tmp_path, body, memory_bytes=200_000_000)
    assert result.status == "oom"
    assert "over the 200 MB limit" in result.reason
    assert result.peak_memory_mb > 200
    assert result.duration_s < 10


def test_peak_memory_is_reported_for_a_run_within_the_limit(tmp_path: Path) -> None:
    body = "import time\nblock = bytearray(150_000_000)\ntime.sleep(0.4)\nprint('loss: 1')\n"
    result = run_script(tmp_path, body, memory_bytes=1_000_000_000)
    assert result.status == "ok"
    assert 150 < result.peak_memory_mb < 400


def test_memory_of_grandchildren_counts(tmp_path: Path) -> None:
    inner = script(tmp_path, "block = bytearray(400_000_000)\nimport time\ntime.sleep(30)\n", "inner.py")
    result = run(spec_for(tmp_path, f"{inner} & {inner} & wait", memory_bytes=600_000_000))
    assert result.status == "oom"


SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}:\n    pass\nprint('loss: 1')\n"


def hogs(core: int, count: int) -> list[subprocess.Popen[bytes]]:
    """Busy loops pinned to one core, each in its own session (so that the scheduler's per-session
    fairness gives each a share, as it gives the run one)."""
    loop = [sys.executable, "-c", "while True: pass"]
    return [subprocess.Popen(["taskset", "-c", str(core), *loop], start_new_session=True) for _ in range(count)]


def test_a_run_measures_its_cpu_time_and_how_busy_other_processes_kept_its_cores(tmp_path: Path) -> None:
    core = sorted(os.sched_getaffinity(0))[0]
    spec = dataclasses.replace(spec_for(tmp_path, script(tmp_path, SPIN.format(s=1.2))), limits=Limits(cpus=(core,)))
    started = hogs(core, 3)
    try:
        time.sleep(0.2)
        contended = run(spec)
    finally:
        for hog in started:
            hog.kill()
            hog.wait()
    assert contended.status == "ok" and 1.2 <= contended.cpu_s < 3.0  # its own time, not the hogs'
    # three busy loops on its one core: they had most of its time
    assert contended.busy is not None and contended.busy >= BUSY, contended
    assert contended.duration_s > contended.cpu_s * 1.5
    short = run_script(tmp_path, "print('loss: 1')\n")
    assert short.status == "ok" and short.busy is None and short.cpu_s < 1.0  # too short to tell


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)")
def test_a_runs_cpu_time_is_kept_inside_the_sandbox_and_when_it_is_killed(tmp_path: Path) -> None:
    """bubblewrap does not wait for what runs inside it, and a killed shell never collects its child: the CPU
    time comes from sampling the tree then (else every such run would look like others' load)."""
    worktree = tmp_path / "wt"
    worktree.mkdir()
    box = Bubblewrap(View(repo=tmp_path, worktree=worktree))
    boxed = run(dataclasses.replace(spec_for(worktree, script(worktree, SPIN.format(s=1.0))), sandbox=box))
    assert boxed.status == "ok", boxed.stderr_tail
    assert 0.9 <= boxed.cpu_s <= boxed.duration_s * len(os.sched_getaffinity(0))
    killed = run_script(tmp_path, "while True:\n    pass\n", timeout_s=1.5)
    assert killed.status == "timeout" and 0.3 <= killed.cpu_s <= killed.duration_s * 1.1


@pytest.mark.parametrize(
    "body",
    [
        "raise MemoryError\n",
        "class _ArrayMemoryError(MemoryError): pass\nraise _ArrayMemoryError('Unable to allocate')\n",
        "raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')\n",
        "class OutOfMemoryError(RuntimeError): pass\nraise OutOfMemoryError('device')\n",
    ],
)
def test_out_of_memory_in_output_is_oom(tmp_path: Path, body: str) -> None:
    result = run_script(tmp_path, body)
    assert result.status == "oom"
    assert result.returncode == 1


def test_memory_error_text_in_a_successful_run_is_not_oom(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print('MemoryError: handled, retrying smaller')\nprint('loss: 2')\n")
    assert (result.status, result.metric) == ("ok", 2.0)


def test_other_error_is_not_oom(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print('MemoryErrorHandler ready')\nraise KeyError('x')\n")
    assert result.status == "crash"


def test_no_output_is_no_metric(tmp_path: Path) -> None:
    result = run_script(tmp_path, "pass\n")
    assert result.status == "no_metric"
    assert result.metric is None
    assert result.reason == f"no line matched {LOSS!r}"


@pytest.mark.parametrize(("printed", "reason"), [("nan", "metric is nan"), ("inf", "metric is inf")])
def test_non_finite_metric_is_invalid(tmp_path: Path, printed: str, reason: str) -> None:
    result = run_script(tmp_path, f"print('loss: {printed}')\n")
    assert (result.status, result.metric, result.reason) == ("invalid_metric", None, reason)


def test_text_metric_is_invalid(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print('loss: 1.5,')\n")
    assert result.status == "invalid_metric"
    assert "'1.5,'" in result.reason


def test_crash_beats_missing_metric_and_timeout_beats_crash(tmp_path: Path) -> None:
    assert run_script(tmp_path, "raise SystemExit(2)\n").status == "crash"
    body = "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: exit(1))\ntime.sleep(30)\n"
    assert run_script(tmp_path, body, timeout_s=0.5).status == "timeout"


# metric from a JSON file


def file_spec(key: str = "val.loss") -> MetricSpec:
    return MetricSpec(file="metrics.json", key=key)


def test_json_file_metric_with_dotted_key(tmp_path: Path) -> None:
    body = "import json\njson.dump({'val': {'loss': 2.5}, 'step': 10}, open('metrics.json', 'w'))\n"
    result = run_script(tmp_path, body, metric=file_spec())
    assert (result.status, result.metric) == ("ok", 2.5)
    assert run_script(tmp_path, body, metric=file_spec("step")).metric == 10.0


@pytest.mark.parametrize(
    ("content", "key", "status"),
    [
        (None, "val.loss", "no_metric"),
        ('{"val": {}}', "val.loss", "no_metric"),
        ('{"val": {"loss": "fast"}}', "val.loss", "invalid_metric"),
        ('{"val": {"loss": true}}', "val.loss", "invalid_metric"),
        ('{"val": {"loss": NaN}}', "val.loss", "invalid_metric"),
        ('{"val": {"loss": 1.0', "val.loss", "invalid_metric"),
    ],
)
def test_json_file_failures(tmp_path: Path, content: str | None, key: str, status: str) -> None:
    body = "pass\n" if content is None else f"open('metrics.json', 'w').write({content!r})\n"
    result = run_script(tmp_path, body, metric=file_spec(key))
    assert result.status == status
    assert result.metric is None


def test_json_file_left_by_an_earlier_run_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"val": {"loss": 1.0}}')
    result = run_script(tmp_path, "print('forgot to write metrics')\n", metric=file_spec())
    assert result.status == "no_metric"
    assert "not rewritten" in result.reason


# evaluator


def test_evaluator_output_is_the_metric(tmp_path: Path) -> None:
    main = script(tmp_path, "print('loss: 99')\nopen('model.txt', 'w').write('0.25')\n")
    evaluator = script(tmp_path, "print('loss:', float(open('model.txt').read()) * 5)\n", "evaluate.py")
    result = run(spec_for(tmp_path, main, metric=MetricSpec(pattern=LOSS, evaluator=evaluator)))
    assert (result.status, result.metric) == ("ok", 1.25)
    log = (tmp_path / "logs" / "stdout.log").read_text()
    assert log.index("loss: 99") < log.index("[rsi: evaluator output follows]") < log.index("loss: 1.25")


def test_evaluator_without_metric_ignores_main_output(tmp_path: Path) -> None:
    main = script(tmp_path, "print('loss: 99')\n")
    evaluator = script(tmp_path, "print('done')\n", "evaluate.py")
    result = run(spec_for(tmp_path, main, metric=MetricSpec(pattern=LOSS, evaluator=evaluator)))
    assert result.status == "no_metric"
    assert "evaluator" in result.reason


def test_failing_evaluator_is_crash(tmp_path: Path) -> None:
    main = script(tmp_path, "print('loss: 1')\n")
    evaluator = script(tmp_path, "print('loss: 2')\nraise SystemExit(4)\n", "evaluate.py")
    result = run(spec_for(tmp_path, main, metric=MetricSpec(pattern=LOSS, evaluator=evaluator)))
    assert (result.status, result.returncode) == ("crash", 4)
    assert result.reason.startswith("evaluator exit code 4")


def test_evaluator_does_not_run_after_a_failed_command(tmp_path: Path) -> None:
    main = script(tmp_path, "raise SystemExit(1)\n")
    evaluator = script(tmp_path, "open('evaluated', 'w')\nprint('loss: 1')\n", "evaluate.py")
    result = run(spec_for(tmp_path, main, metric=MetricSpec(pattern=LOSS, evaluator=evaluator)))
    assert result.status == "crash"
    assert not (tmp_path / "evaluated").exists()


def test_evaluator_shares_the_timeout(tmp_path: Path) -> None:
    main = script(tmp_path, "import time\ntime.sleep(0.6)\n")
    evaluator = script(tmp_path, "import time\ntime.sleep(0.6)\nprint('loss: 1')\n", "evaluate.py")
    metric = MetricSpec(pattern=LOSS, evaluator=evaluator)
    result = run(spec_for(tmp_path, main, metric=metric, timeout_s=1.0))
    assert result.status == "timeout"
    assert result.reason.startswith("evaluator killed")


def test_evaluator_can_write_the_json_file(tmp_path: Path) -> None:
    evaluator = script(tmp_path, "import json\njson.dump({'acc': 0.9}, open('metrics.json', 'w'))\n", "ev.py")
    metric = MetricSpec(file="metrics.json", key="acc", evaluator=evaluator)
    result = run(spec_for(tmp_path, "true", metric=metric))
    assert (result.status, result.metric) == ("ok", 0.9)


# output capture


def test_output_cap_keeps_head_and_tail(tmp_path: Path) -> None:
    body = """
        import sys
        out = sys.stdout.buffer
        out.write(b'HEAD-START\\n')
        line = b'x' * 1023 + b'\\n'
        for _ in range(50 * 1024):
            out.write(line)
        out.write(b'loss: 0.5\\n')
    """
    cap = 1_000_000
    result = run_script(tmp_path, body, output_cap=cap)
    assert (result.status, result.metric) == ("ok", 0.5)
    log = (tmp_path / "logs" / "stdout.log").read_bytes()
    assert cap <= len(log) <= cap + 100
    assert log.startswith(b"HEAD-START\n")
    assert log.endswith(b"x\nloss: 0.5\n")
    omitted = 11 + 50 * 1024 * 1024 + 10 - cap
    assert f"\n[rsi: {omitted} bytes omitted]\n".encode() in log
    assert f"output over the cap: {omitted} bytes dropped" in result.reason
    assert len(result.stdout_tail) == 4000


@given(
    chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=30),
    cap=st.integers(min_value=0, max_value=100),
)
def test_capture_is_head_plus_tail(chunks: list[bytes], cap: int) -> None:
    capture = _Capture(cap)
    for chunk in chunks:
        capture.add(chunk)
    full = b"".join(chunks)
    head, tail_len = cap // 2, cap - cap // 2
    if len(full) <= cap:
        assert capture.data() == full
    else:
        tail = full[len(full) - tail_len :]
        marker = f"\n[rsi: {len(full) - cap} bytes omitted]\n".encode()
        assert capture.data() == full[:head] + marker + tail


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\nloss: 3\\n')\n")
    assert result.status == "ok"
    assert "\ufffd" in result.stdout_tail


# process tree clean-up


def test_background_grandchild_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = run(spec_for(tmp_path, f"sleep 1000 & echo $! > {shlex.quote(str(pid_file))}; echo 'loss: 1'"))
    assert (result.status, result.metric) == ("ok", 1.0)
    assert result.duration_s < 2  # the sleep holds the pipe open until it dies
    assert wait_dead(int(pid_file.read_text()))


def test_daemon_that_left_the_group_is_killed(tmp_path: Path) -> None:
    body = f"""
        import subprocess, time
        daemon = subprocess.Popen(['sleep', '1000'], start_new_session=True)
        open({str(tmp_path / "pid")!r}, 'w').write(str(daemon.pid))
        time.sleep(0.5)
        print('loss: 1')
    """
    result = run_script(tmp_path, body)
    assert result.status == "ok"
    pid = int((tmp_path / "pid").read_text())
    assert os.getpgid(os.getpid()) != pid
    assert wait_dead(pid)
    assert alive(os.getpid())


def test_on_start_gets_the_process_group_id(tmp_path: Path) -> None:
    started: list[int] = []
    body = "import os\nprint('loss:', os.getpgid(0))\n"
    result = run(spec_for(tmp_path, script(tmp_path, body)), on_start=started.append)
    assert len(started) == 1
    assert result.metric == float(started[0])
    assert started[0] != os.getpgid(0)


def test_interrupt_kills_the_group_and_propagates(tmp_path: Path) -> None:
    started: list[int] = []
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(spec_for(tmp_path, "sleep 60 & sleep 60; wait"), on_start=started.append)
    assert time.monotonic() - t0 < 3
    time.sleep(0.1)
    assert group_members(started[0]) == []


def test_error_in_on_start_kills_the_child(tmp_path: Path) -> None:
    started: list[int] = []

    def fail(pid: int) -> None:
        started.append(pid)
        raise RuntimeError("ledger unavailable")

    with pytest.raises(RuntimeError, match="ledger unavailable"):
        run(spec_for(tmp_path, "sleep 60"), on_start=fail)
    assert wait_dead(started[0])


# environment


def test_env_reaches_the_child(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "RSI_SEED": "1234"}
    result = run_script(tmp_path, "import os\nprint('loss:', os.environ['RSI_SEED'])\n", env=env)
    assert (result.status, result.metric) == ("ok", 1234.0)


def test_child_env_is_exactly_the_given_env(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    body = "import os\nprint('loss:', len([k for k in os.environ if k == 'HOME']))\n"
    assert run_script(tmp_path, body, env=env).metric == 0.0


def test_scrub_env_removes_secrets() -> None:
    base = {
        "PATH": "/bin",
        "OPENAI_API_KEY": "sk-1",
        "GITHUB_TOKEN": "gh",
        "aws_secret_access_key": "a",
        "DB_PASSWORD": "p",
        "GOOGLE_APPLICATION_CREDENTIALS": "/c.json",
        "RSI_SEED": "1",
    }
    assert scrub_env(base) == {"PATH": "/bin", "RSI_SEED": "1"}
    assert base["OPENAI_API_KEY"] == "sk-1"  # a copy, not in place
    assert "*TOKEN*" in SECRET_PATTERNS


def test_scrub_env_deny_and_allow() -> None:
    base = {
        "PATH": "/bin",
        "HF_HOME": "/hf",
        "WANDB_API_KEY": "w",
        "MY_TOKENIZER_DIR": "/t",
        "INTERNAL_URL": "u",
    }
    assert scrub_env(base, deny=["internal_*"]) == {"PATH": "/bin", "HF_HOME": "/hf"}
    kept = scrub_env(base, allow=["*TOKENIZER*"])
    assert kept == {"PATH": "/bin", "HF_HOME": "/hf", "MY_TOKENIZER_DIR": "/t", "INTERNAL_URL": "u"}


# spec validation and overhead


@pytest.mark.parametrize(
    "metric",
    [
        MetricSpec(pattern="(", file=None),
        MetricSpec(file="m.json"),
        MetricSpec(pattern="x", file="m"),
    ],
)
def test_bad_metric_spec_is_a_user_error(tmp_path: Path, metric: MetricSpec) -> None:
    with pytest.raises(UserError):
        run(spec_for(tmp_path, "touch launched", metric=metric))
    assert not (tmp_path / "launched").exists()


def test_no_metric_wanted_is_ok_on_exit_0(tmp_path: Path) -> None:
    ok = run(spec_for(tmp_path, "true", metric=MetricSpec()))
    assert ok.status == "ok" and ok.metric is None
    failed = run(spec_for(tmp_path, "exit 3", metric=MetricSpec()))
    assert failed.status == "crash"


def test_a_stop_swallowed_by_python_still_stops_the_run(tmp_path: Path) -> None:
    """Python ignores an exception raised in a finalizer or an at-fork hook (where `logging` makes Ctrl-C land
    about once in four interrupted researches); the recorded request stops the next run all the same."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            from pathlib import Path
            from rsi import interrupt
            from rsi.runner import MetricSpec, RunSpec, run
            interrupt.install()

            class Finalized:
                def __del__(self):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.01)  # the handler runs here, and Python swallows its KeyboardInterrupt

            Finalized()
            print("swallowed", flush=True)
            spec = RunSpec(command="sleep 30", cwd=Path({str(tmp_path)!r}), env=dict(os.environ), timeout_s=60,
                           memory_bytes=None, output_cap=1000, log_dir=Path({str(tmp_path / "logs")!r}),
                           metric=MetricSpec(pattern="x"))
            start = time.monotonic()
            try:
                run(spec)
            except KeyboardInterrupt:
                print(f"stopped after {{time.monotonic() - start:.1f}} s")
                sys.exit(0)
            sys.exit("the run went on")
            """
        )
    )
    done = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "swallowed" in done.stdout and "stopped after" in done.stdout
    assert "Exception ignored" not in done.stderr  # recorded, so not reported as lost


def test_the_stale_cgroup_sweep_spares_the_cgroup_it_runs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An rsi started inside a run (the meta level's evaluator researching an example) sees that run's cgroup,
    whose orchestrator is outside its pid namespace: it looked dead, and the sweep killed the evaluator."""
    from rsi import sandbox

    dead = 2**22 + 1  # above pid_max: no process has it
    mine, stale = tmp_path / f"rsi-{dead}-1", tmp_path / f"rsi-{dead}-2"
    for path, procs in ((mine, f"{os.getpid()}\n"), (stale, "")):
        path.mkdir()
        (path / "cgroup.procs").write_text(procs)
    removed: list[Path] = []
    monkeypatch.setattr(sandbox.PidsCgroup, "remove", lambda self: removed.append(self.path))
    sandbox._remove_stale(tmp_path)
    assert removed == [stale]
    removed.clear()
    (mine / "cgroup.procs").write_text("")  # not listed (another pid namespace), but its path is ours
    monkeypatch.setattr(sandbox, "_own_cgroups", lambda: [mine])
    monkeypatch.setattr(sandbox, "_SWEPT", set())
    sandbox._remove_stale(tmp_path)
    assert removed == [stale]

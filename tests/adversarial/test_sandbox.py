"""What the sandbox shows a run and the limits it sets: held-out data, the cache, extra paths, the network
switch, file size and CPU time, the warning without bubblewrap, and a lock left by a dead orchestrator."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import MakeTask, commit_all, rsi

from rsi.ledger import Ledger
from rsi.runner import MetricSpec, RunSpec, run
from rsi.sandbox import Bubblewrap, Limits, View, bubblewrap_path, cgroup_available

PY = shlex.quote(sys.executable)
needs_bwrap = pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")

PEEK = """\
import os
x = 1.0
def peek(path):
    try:
        return open(path).read().strip() or "empty"
    except OSError as e:
        return type(e).__name__
print("secret:", peek("secret.txt"))
print("cache:", peek(os.path.join(os.environ["RSI_CACHE_DIR"], "data.txt")))
try:
    open(os.path.join(os.environ["RSI_CACHE_DIR"], "poison.txt"), "w").write("x")
    print("cache write: yes")
except OSError:
    print("cache write: no")
import subprocess
shown = subprocess.run(["git", "show", "HEAD:secret.txt"], capture_output=True, text=True).stdout
print("git show:", shown.strip() or "nothing")
print("loss: 1.0")
"""


def runs_output(root: Path) -> list[str]:
    ledger = Ledger(root / ".rsi" / "ledger.sqlite", readonly=True)
    return [r.stdout_tail for e in ledger.experiments() for r in e.runs]


SETUP = "import os; open(os.path.join(os.environ['RSI_CACHE_DIR'], 'data.txt'), 'w').write('d')"


TOML = """\
[task]
editable = ["train.py"]
frozen = ["frozen.py"]
setup = "{python} setup.py"
command = "{python} train.py"

[metric]
name = "loss"
goal = "minimize"
pattern = '^loss:\\s*(\\S+)'

[holdout]
command = "{python} holdout.py"
pattern = '^test:\\s*(\\S+)'
data = [{data}]

[judge]
baseline_repeats = 2
"""


@needs_bwrap
@pytest.mark.parametrize("data", ['"./secret.txt"', '"secret*.txt"', '"nothing-here/", "secret.*"'])
@pytest.mark.slow
def test_held_out_data_and_the_cache_as_each_command_sees_them(make_task: MakeTask, data: str) -> None:
    """Held-out data named as a file or by a glob (matched as rsi.toml's globs are): hidden from every command
    but the holdout's; an entry that names nothing (a typo would hide nothing) is refused before any run."""
    holdout = "print('test:', len(open('secret.txt').read()))\n"
    root = make_task(train=PEEK, files={"secret.txt": "labels\n", "holdout.py": holdout, "setup.py": SETUP})
    (root / "rsi.toml").write_text(TOML.format(python=sys.executable, data=data))
    commit_all(root, "toml")
    if "nothing-here" in data:
        typo = rsi("run", str(root), "--max-experiments", "1")
        assert typo.returncode == 2 and "holdout.data: 'nothing-here/' matches no committed file" in typo.stderr
        assert "Traceback" not in typo.stderr and not runs_output(root)
        (root / "rsi.toml").write_text(TOML.format(python=sys.executable, data='"secret.*"'))
        commit_all(root, "toml")
    proc = rsi("run", str(root), "--max-experiments", "1")
    assert proc.returncode == 0, proc.stderr
    outputs = [o for o in runs_output(root) if "secret:" in o]
    assert outputs and all("labels" not in o for o in outputs), outputs  # /dev/null over it: unreadable
    assert all("cache: d" in o and "cache write: no" in o for o in outputs), outputs
    status = json.loads(rsi("status", str(root), "--json").stdout)
    assert status["baseline"]["holdout"] == 7.0  # the holdout command read the real file
    assert not (root / ".rsi" / "cache" / "poison.txt").exists()


def test_a_sandbox_path_that_does_not_exist_is_refused(make_task: MakeTask) -> None:
    """A `[sandbox]` path a run could not see (bound only if it exists) is exit 2 at the start, not runs that fail
    far from the typo; once it exists, the research runs."""
    root = make_task(extra_toml='[sandbox]\nread_only = ["shared-data"]\n')
    typo = rsi("run", str(root), "--max-experiments", "1")
    assert typo.returncode == 2, typo.stderr
    assert "sandbox.read_only: 'shared-data' does not exist" in typo.stderr and "Traceback" not in typo.stderr
    assert not runs_output(root)
    (root / "shared-data").mkdir()
    proc = rsi("run", str(root), "--max-experiments", "1")
    assert proc.returncode == 0, proc.stderr


def _spec(tmp_path: Path, script: str, limits: Limits) -> RunSpec:
    return RunSpec(
        command=f"{PY} -c {shlex.quote(script)}",
        cwd=tmp_path,
        env=dict(os.environ),
        timeout_s=60,
        memory_bytes=None,
        output_cap=100_000,
        log_dir=tmp_path / "logs",
        metric=MetricSpec(),
        limits=limits,
    )


@needs_bwrap
def test_network_and_extra_writable_paths_are_opt_in(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    shared = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not under /tmp, which the sandbox replaces anyway
    script = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('net: yes')\n"
        f"except OSError:\n    print('net: no')\n"
        f"try:\n    open({str(shared / 'out')!r}, 'w').write('x'); print('write: yes')\n"
        f"except OSError:\n    print('write: no')\n"
    )
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "probe.py").write_text(script)
    bwrap = bubblewrap_path()
    assert bwrap is not None
    closed = View(repo=tmp_path / "repo", worktree=wt)
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    opened = dataclasses.replace(closed, network=True, writable=[shared])
    outputs = {}
    for name, view in (("closed", closed), ("opened", opened)):
        spec = dataclasses.replace(_spec(wt, "", Limits()), command=f"{PY} probe.py", sandbox=Bubblewrap(view, bwrap))
        outputs[name] = run(spec).stdout_tail
    server.close()
    shutil.rmtree(shared, ignore_errors=True)
    assert "net: no" in outputs["closed"] and "write: no" in outputs["closed"], outputs
    assert "net: yes" in outputs["opened"] and "write: yes" in outputs["opened"], outputs


@pytest.mark.parametrize(
    ("limits", "script", "signal_name"),
    [
        (Limits(file_size=1_000_000), "open('big', 'wb').write(b'x' * 5_000_000)", "File too large"),
        (Limits(cpu_seconds=1), "while True: pass", "CPU time limit exceeded"),
    ],
)
def test_file_size_and_cpu_time_limits(tmp_path: Path, limits: Limits, script: str, signal_name: str) -> None:
    result = run(_spec(tmp_path, script, limits))
    assert result.status == "crash" and signal_name in result.reason, result


def test_without_the_sandbox_rsi_warns_once(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 2\n[sandbox]\nenabled = false\n")
    proc = rsi("run", str(root), "--max-experiments", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("candidates run unconfined") == 1, proc.stdout


def test_a_lock_left_by_a_dead_orchestrator_is_released(make_task: MakeTask) -> None:
    root = make_task(extra_toml="[judge]\nbaseline_repeats = 2\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / ".rsi").mkdir()
    (root / ".rsi" / "lock").write_text(str(dead.pid))
    proc = rsi("run", str(root), "--max-experiments", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"the lock of rsi pid {dead.pid}, which is no longer running, was released" in proc.stdout
    again = rsi("run", str(root), "--max-experiments", "3")
    assert again.returncode == 0 and "was released" not in again.stdout, again.stdout


@pytest.mark.skipif(not cgroup_available() and os.geteuid() == 0, reason="root without a pids cgroup: no cap")
def test_the_process_count_is_capped_even_for_root(tmp_path: Path) -> None:
    script = """\
import os, time
made = 0
try:
    for _ in range(60):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        made += 1
except OSError as e:
    print("refused after", made, type(e).__name__)
"""
    result = run(_spec(tmp_path, script, Limits(processes=20)))
    assert "refused after" in result.stdout_tail, result
    assert int(result.stdout_tail.split()[2]) < 20


def test_the_candidate_is_the_oom_killers_first_choice(tmp_path: Path) -> None:
    result = run(_spec(tmp_path, "print(open('/proc/self/oom_score_adj').read())", Limits()))
    assert result.stdout_tail.strip() == "1000"

"""Run one experiment: one execution of a task's command, under the harness's limits, classified.

The harness, not the task, enforces the limits: the command runs in its own session so its whole process group
can be killed, resident memory of the process tree is sampled with psutil, and each output stream keeps only
its head and tail so endless output costs bounded memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import re
import select
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from rsi import interrupt
from rsi.errors import UserError
from rsi.pruning import Point, Watch
from rsi.sandbox import Bare, Limits, Sandbox, confined

SECRET_PATTERNS: tuple[str, ...] = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*CREDENTIAL*")
TERM_GRACE_S = 2.0  # between SIGTERM and SIGKILL on timeout: lets a script flush its logs and checkpoints
INTERRUPT_GRACE_S = 0.2  # the user pressed Ctrl-C: be quick
FIRST_SAMPLE_S = 0.002  # sample memory early: a fast allocation must not slip past the limit
SAMPLE_EVERY_S = 0.05  # then at this pace: a psutil sample of a small tree costs about 0.5 ms
READER_JOIN_S = 0.5  # an escaped daemon may hold a pipe open forever; do not wait for it
REAP_TIMEOUT_S = 10.0  # a process stuck in the kernel may ignore even SIGKILL for a while
TAIL_CHARS = 4000
METRIC_FILE_MAX = 10_000_000  # bytes of a metric JSON file
CHUNK_BYTES = 1 << 16
MB = 1_000_000  # sizes follow the config, where MB and GB are powers of ten
BUSY = 0.5  # a run whose cores other processes kept this busy (a share of their time) was contended
BUSY_MIN_RUN_S = 1.0  # a shorter run's share of its cores used by others is not measured: CPU clocks tick in 10 ms
# the last line of a Python traceback: MemoryError, torch's OutOfMemoryError, numpy's _ArrayMemoryError
OOM_OUTPUT = re.compile(r"^[\w.]*MemoryError(?=:|$)|CUDA out of memory", re.MULTILINE)
EVALUATOR_MARKER = b"\n[rsi: evaluator output follows]\n"

Outcome = tuple[str, float | None, str]  # status, metric, reason


@dataclass(frozen=True)
class MetricSpec:
    """Where the metric comes from: a regex over the output, or a key in a JSON file the run writes."""

    # neither pattern nor file: no metric is wanted (a setup command); exit 0 is then `ok`
    pattern: str | None = None  # MULTILINE regex, first group; last match wins; stdout, then stderr
    file: str | None = None  # JSON file relative to cwd ...
    key: str | None = None  # ... and its key, dotted for nesting ("val.loss")
    evaluator: str | None = None  # command run after `command`; the metric then comes from it alone


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; the environment is already scrubbed and seeded by the caller."""

    command: str
    cwd: Path
    env: Mapping[str, str]
    timeout_s: float  # wall clock for command and evaluator together
    memory_bytes: int | None  # resident memory of the whole process tree
    output_cap: int  # bytes kept per stream: half head, half tail
    log_dir: Path
    metric: MetricSpec
    sandbox: Sandbox = field(default_factory=Bare)
    limits: Limits = field(default_factory=Limits)
    # where the evaluator runs, made after the command: a fresh checkout holding the run's outputs, so that
    # nothing the command left (a module shadowing one the evaluator imports) runs as the evaluator
    evaluation: Callable[[], tuple[Path, Sandbox]] | None = None


@dataclass
class RunResult:
    """The classified outcome of one run, as the ledger stores it."""

    status: str  # ok | crash | timeout | oom | no_metric | invalid_metric | pruned
    metric: float | None
    returncode: int | None
    duration_s: float
    peak_memory_mb: float
    stdout_tail: str
    stderr_tail: str
    reason: str
    progress: list[Point] = field(default_factory=list)  # (step, value) the run reported as it went
    cpu_s: float = 0.0  # CPU time of its processes (see _Tree.cpu_s)
    busy: float | None = None  # the share of its cores' time other processes used while it ran (see run())


class _Capture:
    """Keeps the head and the tail of a stream so that gigabytes of output cost at most the cap."""

    def __init__(self, cap: int) -> None:
        self.head_cap, self.tail_cap = cap // 2, cap - cap // 2
        self.head, self.tail = bytearray(), bytearray()
        self.total = 0
        self.lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        """Fills the head first; later bytes push the oldest tail bytes out."""
        with self.lock:
            self.total += len(chunk)
            room = max(self.head_cap - len(self.head), 0)
            self.head += chunk[:room]
            self.tail += chunk[room:]
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]  # cheap: bytearray moves its start

    def kept(self) -> int:
        with self.lock:
            return len(self.head) + len(self.tail)

    def data(self) -> bytes:
        """Head and tail joined by a marker that says how much was dropped, so a log never misleads."""
        with self.lock:
            omitted = self.total - len(self.head) - len(self.tail)
            marker = f"\n[rsi: {omitted} bytes omitted]\n".encode() if omitted else b""
            return bytes(self.head) + marker + bytes(self.tail)


class _Tree:
    """Follows the child's descendants: their memory counts, and some may leave the process group."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)  # not reaped yet, so the pid cannot have been reused
        self.seen: dict[int, psutil.Process] = {}
        self.peak = 0
        self.reaped_cpu_s = 0.0  # CPU time of the child and the descendants it waited for, once it is reaped
        self.sampled_cpu_s: dict[int, float] = {}  # per process of the tree: its own CPU time when last seen

    @property
    def cpu_s(self) -> float:
        """The tree's CPU time: what the child's reaping reported, or what the samples saw where that is more
        (a sandbox that does not wait for what runs inside it, a tree killed before its shell collected it);
        the samples miss at most a process's last interval and processes that lived less than one."""
        return max(self.reaped_cpu_s, sum(self.sampled_cpu_s.values()))

    def sample(self) -> int:
        """Sums resident memory over the tree; a process that vanishes mid-sample just stops counting."""
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            self.seen[proc.pid] = proc
            with contextlib.suppress(psutil.Error), proc.oneshot():
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self.sampled_cpu_s[proc.pid] = max(self.sampled_cpu_s.get(proc.pid, 0.0), times.user + times.system)
        self.peak = max(self.peak, total)
        return total

    def send(self, sig: signal.Signals) -> None:
        """Reaches descendants that left the group (setsid daemons); psutil refuses a reused pid."""
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and proc.is_running():
                    proc.send_signal(sig)

    def alive(self) -> bool:
        """True while a descendant still runs: /bin/sh dies at once on SIGTERM, its children may not."""
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False


@dataclass
class _Execution:
    """One process tree's outcome before classification."""

    returncode: int | None
    killed_for: str | None  # "timeout", "oom" or "pruned" when the harness killed it
    peak_bytes: int  # for "oom", the sample that broke the limit: every earlier one was below it
    stdout: bytes
    stderr: bytes
    omitted: int = 0  # bytes of output dropped by the cap, both streams
    cpu_s: float = 0.0  # CPU time the tree used (see _Tree.cpu_s)


def run(spec: RunSpec, on_start: Callable[[int], None] | None = None, watch: Watch | None = None) -> RunResult:
    """Runs the command (then the evaluator, if any) under the limits and classifies what happened.

    `on_start` gets each launched pid, which is also its process group id, so the engine can kill orphans.
    `watch` reads the command's progress reports as they come, and may stop it (early stopping).
    """
    _check_metric_spec(spec.metric)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    metric_file = spec.cwd / spec.metric.file if spec.metric.file else None
    before = _stat_key(metric_file) if metric_file else None
    cores = spec.limits.cpus or tuple(sorted(os.sched_getaffinity(0)))
    busy_before = busy_seconds(cores)
    started = time.monotonic()
    deadline = started + spec.timeout_s
    main = _execute(spec.command, spec, deadline, on_start, watch)
    stdout, stderr, evaluator = main.stdout, main.stderr, None
    if (command := spec.metric.evaluator) and main.killed_for is None and main.returncode == 0:
        if spec.evaluation is not None:
            cwd, box = spec.evaluation()
            spec = dataclasses.replace(spec, cwd=cwd, sandbox=box)
            before = None  # the metric file is the evaluator's, in a place the command never saw
        evaluator = _execute(command, spec, deadline, on_start)
        stdout += EVALUATOR_MARKER + evaluator.stdout
        stderr += EVALUATOR_MARKER + evaluator.stderr
    duration = time.monotonic() - started
    busy = None
    if duration >= BUSY_MIN_RUN_S:  # the cores' busy time that was not this run's, per second per core
        others = busy_seconds(cores) - busy_before - main.cpu_s - (evaluator.cpu_s if evaluator else 0.0)
        busy = round(min(1.0, max(0.0, others / (duration * len(cores)))), 3)
    (spec.log_dir / "stdout.log").write_bytes(stdout)
    (spec.log_dir / "stderr.log").write_bytes(stderr)
    status, metric, reason = _classify(spec, main, evaluator, before)
    if status == "pruned" and watch is not None:
        reason = watch.reason
    omitted = main.omitted + (evaluator.omitted if evaluator else 0)
    if omitted:  # recorded, so that a metric line lost in the middle of the output is explained
        reason += f"; output over the cap: {omitted} bytes dropped from the middle of the log"
    return RunResult(
        status=status,
        metric=metric,
        returncode=(evaluator or main).returncode,
        duration_s=duration,
        peak_memory_mb=max(main.peak_bytes, evaluator.peak_bytes if evaluator else 0) / MB,
        stdout_tail=_tail(stdout),
        stderr_tail=_tail(stderr),
        reason=reason,
        progress=list(watch.points) if watch is not None else [],
        cpu_s=round(main.cpu_s + (evaluator.cpu_s if evaluator else 0.0), 3),
        busy=busy,
    )


def busy_seconds(cores: Sequence[int]) -> float:
    """CPU seconds the cores have spent on any work (not idle, not waiting for I/O) since boot; time a
    hypervisor gave another guest (steal) counts as busy: this run could not have it either."""
    times = psutil.cpu_times(percpu=True)
    total = 0.0
    for core in cores:
        if core < len(times):
            t = times[core]
            total += (
                sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
            )
    return total


def _check_metric_spec(metric: MetricSpec) -> None:
    """Fails before launching anything: a bad metric spec would waste the whole run."""
    if metric.pattern is not None and metric.file is not None:
        raise UserError("metric: set either `pattern` or `file` (with `key`), not both")
    if metric.file is not None and not metric.key:
        raise UserError(f"metric: `file = {metric.file!r}` needs a `key`")
    if metric.pattern is not None:
        try:
            re.compile(metric.pattern)
        except re.error as exc:
            raise UserError(f"metric: `pattern` {metric.pattern!r} is not a valid regex: {exc}") from None


def _execute(
    command: str, spec: RunSpec, deadline: float, on_start: Callable[[int], None] | None, watch: Watch | None = None
) -> _Execution:
    """Launches one shell command in its own session and supervises it until it ends or is killed."""
    with confined(spec.limits) as launcher:
        proc = subprocess.Popen(
            [*launcher, *spec.sandbox.argv(command, spec.cwd)],
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return _supervised(proc, spec, deadline, on_start, watch)


def _supervised(
    proc: subprocess.Popen[bytes],
    spec: RunSpec,
    deadline: float,
    on_start: Callable[[int], None] | None,
    watch: Watch | None,
) -> _Execution:
    tree = _Tree(proc.pid)
    out, err = _Capture(spec.output_cap), _Capture(spec.output_cap)
    pipes = ((proc.stdout, out, watch, 0), (proc.stderr, err, watch, 1))
    readers = [threading.Thread(target=_pump, args=pipe, daemon=True) for pipe in pipes]
    try:  # from here on no failure may leave the child running: Ctrl-C, no threads left, a bad on_start
        for reader in readers:
            reader.start()
        interrupt.check()  # a stop whose KeyboardInterrupt Python swallowed in its at-fork hooks
        if on_start is not None:
            on_start(proc.pid)
        killed_for = _supervise(proc, tree, deadline, spec.memory_bytes, watch)
    except BaseException:
        _stop(proc, tree, INTERRUPT_GRACE_S)
        raise
    _signal_group(proc.pid, signal.SIGKILL)  # leftovers in the group, e.g. `cmd &`
    tree.send(signal.SIGKILL)
    for reader in readers:
        reader.join(READER_JOIN_S)
    omitted = out.total + err.total - out.kept() - err.kept()
    return _Execution(proc.returncode, killed_for, tree.peak, out.data(), err.data(), omitted, tree.cpu_s)


def _pump(stream: IO[bytes], capture: _Capture, watch: Watch | None, which: int) -> None:
    """Drains a pipe so the child never blocks on it; the thread owns the stream: no close under a read."""
    try:
        while chunk := os.read(stream.fileno(), CHUNK_BYTES):
            capture.add(chunk)
            if watch is not None:
                try:
                    watch.feed(chunk, which)
                except Exception:  # a progress report must never stop the pipe from draining
                    watch = None
    except OSError:
        pass
    finally:
        stream.close()


def _supervise(
    proc: subprocess.Popen[bytes], tree: _Tree, deadline: float, limit: int | None, watch: Watch | None
) -> str | None:
    """Waits for exit while sampling memory; returns why the harness killed the tree, if it did."""
    pidfd = _pidfd(proc.pid)
    interval = FIRST_SAMPLE_S
    try:
        while True:
            interrupt.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop(proc, tree, TERM_GRACE_S)
                return "timeout"
            if _wait_exit(proc, tree, pidfd, min(interval, remaining)):
                return None
            if tree.sample() > (limit if limit is not None else math.inf):
                _stop(proc, tree, 0.0)  # no grace: every extra byte could take the machine down
                return "oom"
            if watch is not None and watch.stop.is_set():
                _stop(proc, tree, INTERRUPT_GRACE_S)  # its result is not wanted: nothing to flush
                return "pruned"
            interval = min(interval * 2, SAMPLE_EVERY_S)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A pidfd turns readable the instant the process exits (Linux 5.3+); Popen.wait only polls."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_exit(proc: subprocess.Popen[bytes], tree: _Tree, pidfd: int | None, timeout: float) -> bool:
    """Waits up to `timeout` seconds for the child to exit; True if it did (and it is reaped)."""
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
    return _reap(proc, tree, timeout)


def _reap(proc: subprocess.Popen[bytes], tree: _Tree, timeout: float) -> bool:
    """Reaps the child if it exits within `timeout` seconds, with wait4 rather than Popen.wait, to keep its CPU
    time; True if it is reaped."""
    end = time.monotonic() + timeout
    delay = 0.0005
    while proc.returncode is None:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: Popen knows its code
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0)
            return proc.returncode is not None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            tree.reaped_cpu_s = usage.ru_utime + usage.ru_stime
            break
        if time.monotonic() >= end:
            return False
        time.sleep(min(delay, max(0.0, end - time.monotonic())))
        delay = min(delay * 2, 0.02)
    return True


def _stop(proc: subprocess.Popen[bytes], tree: _Tree, grace: float) -> None:
    """SIGTERM first so the script can flush, then SIGKILL for anything that ignored it."""
    if grace > 0:
        tree.sample()  # know the whole tree before it starts to fall apart
        _signal_group(proc.pid, signal.SIGTERM)
        tree.send(signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and tree.alive():
            _reap(proc, tree, 0.02)  # reaps the shell, which then no longer counts
    _signal_group(proc.pid, signal.SIGKILL)
    tree.send(signal.SIGKILL)
    _reap(proc, tree, REAP_TIMEOUT_S)  # give up on a process stuck in the kernel, not hang the engine


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signals the whole session's group; an empty group is the normal case after a clean exit."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _tail(data: bytes) -> str:
    """The end of a log for the ledger; 4 bytes per char covers any UTF-8 text."""
    return _decode(data[-4 * TAIL_CHARS :])[-TAIL_CHARS:]


def _classify(
    spec: RunSpec, main: _Execution, evaluator: _Execution | None, before: tuple[int, int, int] | None
) -> Outcome:
    """Applies the status precedence: timeout > oom > crash > no_metric > invalid_metric > ok."""
    failure = _failure(main, spec, "")
    if failure is None and evaluator is not None:
        failure = _failure(evaluator, spec, "evaluator ")
    if failure is not None:
        return failure
    metric = spec.metric
    if metric.file is not None and metric.key is not None:
        return _metric_from_file(spec.cwd / metric.file, metric.file, metric.key, before)
    if metric.pattern is None:
        return "ok", None, "exit code 0"
    source = evaluator or main
    raw = parse_metric_text(metric.pattern, _decode(source.stdout), _decode(source.stderr))
    if raw is None:
        where = "of the evaluator's output " if evaluator else ""
        return "no_metric", None, f"no line {where}matched {metric.pattern!r}"
    return _judge_value(raw)


def _failure(ex: _Execution, spec: RunSpec, who: str) -> Outcome | None:
    """Says how a process tree failed, or None if it exited 0 on its own."""
    if ex.killed_for == "timeout":
        return "timeout", None, f"{who}killed after {spec.timeout_s:g}s wall clock"
    if ex.killed_for == "pruned":
        return "pruned", None, "stopped early: clearly behind the champion"
    if ex.killed_for == "oom":
        limit = (spec.memory_bytes or 0) / MB
        return "oom", None, f"{who}resident memory {ex.peak_bytes / MB:.0f} MB over the {limit:.0f} MB limit"
    if ex.returncode == 0:
        return None
    stderr = _decode(ex.stderr)
    if found := OOM_OUTPUT.search(stderr) or OOM_OUTPUT.search(_decode(ex.stdout)):
        return "oom", None, f"{who}exit code {ex.returncode}, output shows {found.group(0)}"
    return "crash", None, who + _crash_reason(ex.returncode, stderr)


def _crash_reason(returncode: int | None, stderr: str) -> str:
    """Names the exit and quotes stderr's last line, which is usually the error."""
    if returncode is None:
        return "still running after SIGKILL"
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal.strsignal(-returncode)})"
    if 128 < returncode < 128 + signal.NSIG and (name := signal.strsignal(returncode - 128)):
        # a shell reports its child's death by signal N as exit code 128 + N
        return f"exit code {returncode}: killed by signal {returncode - 128} ({name})"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = f": {lines[-1][:200]}" if lines else ""
    if returncode == 127 and "not found" in stderr:
        return f"exit code 127, command not found{last}"
    return f"exit code {returncode}{last}"


def _judge_value(raw: object) -> Outcome:
    """Turns a matched or stored value into a metric; NaN, infinities and text are invalid."""
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        if (value := to_metric(str(raw))) is not None:
            return "ok", value, f"metric {value:g}"
        with contextlib.suppress(ValueError, OverflowError):
            return "invalid_metric", None, f"metric is {float(raw):g}"
    return "invalid_metric", None, f"metric {raw!r} is not a number"


def _metric_from_file(path: Path, name: str, key: str, before: tuple[int, int, int] | None) -> Outcome:
    """Reads the metric from JSON the run wrote; a file left by an earlier run does not count."""
    after = _stat_key(path)
    if after is None:
        return "no_metric", None, f"{name} not found"
    if after == before:
        return "no_metric", None, f"{name} was not rewritten by this run"
    try:
        node = json.loads(_read_regular(path, METRIC_FILE_MAX).decode("utf-8", errors="replace"))
    except ValueError as exc:
        return "invalid_metric", None, f"{name} is not valid JSON: {exc}"
    except OSError as exc:
        return "invalid_metric", None, f"{name}: {exc.strerror or exc}"
    if isinstance(node, dict) and key in node:  # a flat key that holds dots itself
        return _judge_value(node[key])
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "no_metric", None, f"key {key!r} not in {name}"
        node = node[part]
    return _judge_value(node)


def _read_regular(path: Path, limit: int) -> bytes:
    """Reads a file the run wrote, refusing what could hang or flood the orchestrator: a symlink (to
    /dev/zero, say), a FIFO, a device, or anything over `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > limit:
            raise OSError(0, f"larger than {limit} bytes")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """Identifies a file version by inode, size and mtime: immune to clock skew on shared filesystems."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def parse_metric_text(pattern: str, stdout: str, stderr: str) -> str | None:
    """Returns the last match's first group: the last evaluation a script prints is its result."""
    regex = re.compile(pattern, re.MULTILINE)
    for text in (stdout, stderr):
        if last := deque(regex.finditer(text), maxlen=1):
            return last[0].group(1) if regex.groups else last[0].group(0)
    return None


def to_metric(raw: str) -> float | None:
    """Parses a metric; NaN and infinities are None because they cannot be compared or averaged."""
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def scrub_env(base: Mapping[str, str], deny: Sequence[str] = (), allow: Sequence[str] = ()) -> dict[str, str]:
    """Drops variables that look like secrets because candidate code is untrusted; `allow` wins over deny."""
    blocked = (*SECRET_PATTERNS, *deny)
    return {name: value for name, value in base.items() if _matches(name, allow) or not _matches(name, blocked)}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Case-insensitive on every platform: `api_key` is as secret as `API_KEY`."""
    return any(fnmatch.fnmatchcase(name.upper(), pattern.upper()) for pattern in patterns)


def kill_orphan(pid: int | None, started: float | None) -> None:
    """Kills the process group of a run whose orchestrator died, if that process still exists."""
    if not pid:
        return
    try:
        if started and abs(psutil.Process(pid).create_time() - started) > 1.0:
            return  # the pid was reused by an unrelated process
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return

